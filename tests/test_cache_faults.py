"""A damaged or half-written model cache is detected and repaired; it never loads silently, never crashes the doctor.

Every test works in its own WORKSHOP_UTILS_CACHE (a tiny stand-in model with the real tokenizer), never in the
shared cache.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workshop_utils import models
from workshop_utils.doctor import run_checks
from workshop_utils.models import ChecksumError, ModelSetupError, cache_problems, load_model, prepare_default_model

REAL_CACHE = models.cache_dir()  # read before any test points the variable elsewhere
REAL_MODEL = REAL_CACHE / models.DEFAULT_MODEL
TESTS = Path(__file__).resolve().parent


def tiny_conversion(gguf):
    """Stands in for the 25-second GGUF conversion: a tiny Llama (seed 0, so the same bytes each time)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
    return LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(REAL_MODEL)


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory):
    """A cache prepared once by the real prepare (tiny conversion); each test gets a copy."""
    import shutil

    folder = tmp_path_factory.mktemp("template") / "cache"
    (folder / "downloads").mkdir(parents=True)
    shutil.copy(REAL_CACHE / "downloads" / models.WHEEL_FILE, folder / "downloads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKSHOP_UTILS_CACHE", str(folder))
        mp.setattr(models, "load_gguf", tiny_conversion)
        prepare_default_model()
    return folder


@pytest.fixture
def cache(prepared_template, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "cache"
    shutil.copytree(prepared_template, folder, symlinks=True)
    monkeypatch.setenv("WORKSHOP_UTILS_CACHE", str(folder))
    monkeypatch.setattr(models, "load_gguf", tiny_conversion)
    return folder


def weights(cache: Path) -> Path:
    return cache / models.DEFAULT_MODEL / "model.safetensors"


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _forbid_loading(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the damage was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _model_row(rows):
    return next(r for r in rows if r.name == "default model")


def test_conversion_records_each_files_sha256(cache):
    manifest = json.loads((cache / models.DEFAULT_MODEL / models.MANIFEST).read_text())
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    record = manifest["files"]["model.safetensors"]
    assert record["sha256"] == models.sha256_of(weights(cache)) and record["size"] == weights(cache).stat().st_size
    assert cache_problems() == []


def test_a_flipped_byte_fails_the_doctor_then_prepare_repairs_it(cache, monkeypatch, capsys):
    original = models.sha256_of(weights(cache))
    flip_byte(weights(cache), weights(cache).stat().st_size - 100)  # in a tensor: header and size stay valid
    assert cache_problems(full=False) == [], "a flipped byte in the data passes the cheap check..."
    assert cache_problems() == ["model.safetensors: its sha256 differs from the one recorded at conversion"]

    with monkeypatch.context() as m:
        _forbid_loading(m)
        row = _model_row(run_checks(generate=False))
    assert row.ok is False and "damaged" in row.value and "python -m workshop_utils prepare" in row.fix

    folder = prepare_default_model()
    assert "damaged" in capsys.readouterr().err
    assert cache_problems() == [] and models.sha256_of(folder / "model.safetensors") == original
    assert _model_row(run_checks(generate=False)).ok is True


def test_a_damaged_header_is_refused_by_load_model_naming_prepare(cache, monkeypatch):
    flip_byte(weights(cache), 9)  # inside the JSON header
    _forbid_loading(monkeypatch)
    with pytest.raises(ChecksumError, match=r"damaged.*Fix: run `python -m workshop_utils prepare`"):
        load_model(device="cpu")
    row = _model_row(run_checks(generate=False))
    assert row.ok is False and "prepare" in row.fix


@pytest.mark.parametrize("damage", ["truncate", "length", "delete tokenizer"])
def test_other_damage_fails_the_cheap_check(cache, monkeypatch, damage):
    folder = cache / models.DEFAULT_MODEL
    if damage == "truncate":
        os.truncate(weights(cache), weights(cache).stat().st_size - 1)
    elif damage == "length":
        with open(weights(cache), "r+b") as f:
            f.write((10**12).to_bytes(8, "little"))
    else:
        (folder / "tokenizer.json").unlink()
    _forbid_loading(monkeypatch)
    with pytest.raises(ChecksumError, match="Fix: run `python -m workshop_utils prepare`"):
        load_model(device="cpu")


def test_prepare_removes_stale_temporary_folders_and_says_how_much(cache, capsys):
    stale = cache / ".tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * (5 << 20))
    (cache / "downloads" / ".tmp-pip").mkdir()
    rows = run_checks(generate=False)
    assert any(r.name == "leftover temporary files" and "5 MB" in r.value for r in rows)
    prepare_default_model()
    assert "removed 5 MB" in capsys.readouterr().err
    assert not list(cache.rglob(".tmp-*"))


def test_a_cache_from_before_checksums_gets_them_recorded_once(cache):
    manifest_path = cache / models.DEFAULT_MODEL / models.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    assert not models.has_checksums()
    assert _model_row(run_checks(generate=False)).ok is None  # information, with the fix: run prepare once
    prepare_default_model()
    assert models.has_checksums() and cache_problems() == []


def test_cache_variable_pointing_at_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("WORKSHOP_UTILS_CACHE", str(tmp_path / "file"))
    with pytest.raises(ModelSetupError, match="is a file. Fix: point WORKSHOP_UTILS_CACHE to a folder"):
        prepare_default_model()
    row = _model_row(run_checks(generate=False))
    assert row.ok is False and "WORKSHOP_UTILS_CACHE" in row.fix


def test_read_only_cache(cache, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (tests run as root, which chmod cannot stop)
    assert prepare_default_model() == models.default_model_dir(), "an intact read-only cache is usable"
    flip_byte(weights(cache), weights(cache).stat().st_size - 100)
    with pytest.raises(ModelSetupError, match="not writable.*Fix: point WORKSHOP_UTILS_CACHE"):
        prepare_default_model()


@pytest.mark.slow
def test_sigkill_during_prepare_force_loses_nothing(cache, capsys, monkeypatch):
    """Kill `prepare --force` at each point; the next prepare succeeds, no temporary folder stays, weights verify."""
    before = models.sha256_of(weights(cache))

    def no_conversion(gguf):
        raise AssertionError("the old copy was lost: the next prepare had to convert again")

    monkeypatch.setattr(models, "load_gguf", no_conversion)
    env = {**os.environ, "REAL_MODEL_DIR": str(REAL_MODEL), "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}
    for point in ["swapping", "extracted", "converting", "half-written", "saved"]:
        marker = cache.parent / f"reached-{point}"
        child = subprocess.Popen([sys.executable, str(TESTS / "prepare_killable.py"), point, str(marker)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert child.poll() is None, f"{point}: prepare ended before the point: {child.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"{point}: never reached"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if point == "swapping":
            assert not (cache / models.DEFAULT_MODEL).exists(), "killed between the renames: the old copy is aside"
        assert list(cache.glob(".tmp-*")), f"{point}: the kill should have left a temporary folder"

        assert prepare_default_model() == models.default_model_dir()  # the next prepare, as a plain call
        assert "removed" in capsys.readouterr().err and not list(cache.rglob(".tmp-*")), point
        assert cache_problems() == [] and models.sha256_of(weights(cache)) == before, point
