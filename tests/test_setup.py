"""The two commands and the files around them stay consistent; `make lab` really serves JupyterLab."""

import os
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml
from processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_what_pyproject_declares():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = [line for line in pip if not line.startswith("-")]
    assert sorted(requirements) == sorted(PYPROJECT["project"]["dependencies"])
    assert "-e ." in pip, "the pip section installs the package itself"
    assert any("download.pytorch.org/whl/cpu" in line for line in pip), "conda users get CPU torch too"


def test_torch_is_pinned_and_the_makefile_reads_the_pin():
    deps = PYPROJECT["project"]["dependencies"]
    assert "torch==2.13.0" in deps
    done = subprocess.run(["make", "-n", "-B", ".venv/.installed", "PYTHON=python3"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert '"torch==2.13.0"' in done.stdout and "download.pytorch.org/whl/cpu" in done.stdout


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    top = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert "make lab" in top and "make test" in top
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and os.access(ROOT / ".ci" / "run", os.X_OK)
    assert ".venv" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.slow
def test_make_lab_serves_jupyterlab(tmp_path):
    port = free_port()
    args = "--no-browser --ServerApp.token= --ServerApp.password= --ServerApp.ip=127.0.0.1"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    lab = subprocess.Popen(["make", "lab", f"PORT={port}", f"LAB_ARGS={args}"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            assert lab.poll() is None, "make lab exited early"
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5).status
            except OSError:
                time.sleep(1)
        assert status == 200, "JupyterLab did not answer on /lab within two minutes"
    finally:
        stop(lab)
