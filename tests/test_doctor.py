"""The doctor: one table, exit status 0 when ready, the fix on the same line when not."""

import os
import subprocess
import sys

import pytest

from workshop_utils.doctor import report, run_checks


def _doctor(env_overrides):
    env = {**os.environ, **env_overrides}
    return subprocess.run([sys.executable, "-m", "workshop_utils", "doctor"], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_ready_machine_passes_and_generates():
    done = _doctor({})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ["python", "torch", "transformers", "ipywidgets", "jupyterlab_widgets", "device",
                 "default model", "load default model", "5-token greedy generation"]:
        assert any(line.startswith(name) for line in lines), f"no {name!r} line"
    assert "FAIL" not in done.stdout
    assert "'The capital of France is' -> ' Paris" in done.stdout
    assert done.stderr == "", "no progress bars or warnings"


@pytest.mark.slow
def test_missing_model_fails_with_the_fix_on_its_line(tmp_path):
    done = _doctor({"WORKSHOP_UTILS_CACHE": str(tmp_path)})
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if line.startswith("default model"))
    assert "FAIL" in line and "fix: run `python -m workshop_utils prepare`" in line


def test_missing_widgets_extension_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr("jupyter_core.paths.jupyter_path", lambda *parts: [str(tmp_path)])
    rows = run_checks(generate=False)
    row = next(r for r in rows if r.name == "JupyterLab widgets extension")
    assert row.ok is False and "jupyterlab_widgets" in row.fix
    assert "FAIL" in report(rows).text
