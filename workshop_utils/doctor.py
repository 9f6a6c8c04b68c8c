"""Is this machine ready for the workshop? One table, with the fix on every line that fails."""

from __future__ import annotations

import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .display import Rendered, html_table, text_table
from .models import (DEFAULT_MODEL, PREPARE_COMMAND, ModelSetupError, cache_dir, cache_problems, check_cache_folder,
                     damaged_cache_message, default_model_dir, folder_bytes, has_checksums, is_prepared, pick_device,
                     stale_temp_folders)

SETUP_FIX = "run `make setup` (or `pip install -e .` in your environment)"
MODEL_BYTES = 700 * 2**20  # the wheel (93 MB) plus the float32 safetensors (540 MB), with margin
PROMPT = "The capital of France is"


@dataclass
class Row:
    """One line of the doctor's table: ok is True, False (blocks the workshop) or None (information)."""

    name: str
    ok: bool | None
    value: str
    fix: str = ""


def _version(package: str) -> Row:
    try:
        return Row(package, True, metadata.version(package))
    except metadata.PackageNotFoundError:
        return Row(package, False, "missing", SETUP_FIX)


def _widgets_extension() -> Row:
    from jupyter_core.paths import jupyter_path

    found = [Path(p) / "@jupyter-widgets" / "jupyterlab-manager" for p in jupyter_path("labextensions")]
    if any(p.is_dir() for p in found):
        return Row("JupyterLab widgets extension", True, "installed")
    return Row("JupyterLab widgets extension", False, "missing: widgets would show as text",
               "install jupyterlab_widgets in the environment that runs `jupyter lab`, then restart it")


def _disk() -> Row:
    folder = cache_dir()
    probe = next((p for p in [folder, *folder.parents] if p.exists()), Path.home())
    free = shutil.disk_usage(probe).free
    needed = 0 if is_prepared() else MODEL_BYTES
    ok = free >= needed + 200 * 2**20
    fix = "" if ok else f"free some disk space, or point WORKSHOP_UTILS_CACHE to a disk with {needed / 2**30:.1f} GB free"
    return Row("free disk (model cache)", ok, f"{free / 2**30:.1f} GB at {probe}", fix)


def run_checks(generate: bool = True) -> list[Row]:
    """Check versions, device, disk, the widgets extension and the default model; optionally generate."""
    python_ok = sys.version_info >= (3, 10)
    rows = [Row("python", python_ok, platform.python_version(), "" if python_ok else "install Python 3.11")]
    rows += [_version(p) for p in ("torch", "transformers", "ipywidgets", "jupyterlab_widgets")]
    if not all(r.ok for r in rows):
        return rows
    rows.append(_widgets_extension())
    import torch

    device = pick_device("auto")
    detail = f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    rows.append(Row("device", None, detail + (f": {torch.cuda.get_device_name()}" if device.type == "cuda" else "")))
    try:
        check_cache_folder()
    except ModelSetupError as error:
        message, fix = str(error).split(" Fix: ")
        rows.append(Row("default model", False, message, fix))
        return rows
    rows.append(_disk())
    if stale := stale_temp_folders():
        freed = sum(folder_bytes(p) for p in stale)
        rows.append(Row("leftover temporary files", None, f"{freed / 2**20:.0f} MB from an interrupted prepare",
                        f"run `{PREPARE_COMMAND}` to remove them"))
    if not is_prepared():
        rows.append(Row("default model", False, f"not in {cache_dir()}", f"run `{PREPARE_COMMAND}` (needs internet once)"))
        return rows
    if problems := cache_problems():  # every file's sha256, before anything loads or generates
        message, fix = damaged_cache_message(problems).split(" Fix: ")
        rows.append(Row("default model", False, message, fix))
        return rows
    if not has_checksums():
        rows.append(Row("default model", None, f"{default_model_dir()} (no checksums recorded yet)",
                        f"run `{PREPARE_COMMAND}` once to record them"))
    else:
        rows.append(Row("default model", True, f"{default_model_dir()} (every file verified)"))

    start = time.perf_counter()
    import transformers  # imported once per kernel: timed apart from the load
    from transformers import LlamaForCausalLM  # noqa: F401

    transformers.utils.logging.disable_progress_bar()

    rows.append(Row("import torch + transformers", None, f"{time.perf_counter() - start:.1f} s"))
    from .models import load_model

    start = time.perf_counter()
    try:
        model, tokenizer = load_model(device="cpu")
    except (ModelSetupError, OSError) as error:
        rows.append(Row("load default model", False, str(error).split(" Fix: ")[0],
                        f"run `{PREPARE_COMMAND} --force` to convert the model again"))
        return rows
    seconds = time.perf_counter() - start
    rows.append(Row("load default model", None, f"{seconds:.2f} s (goal: under 2 s)"))
    if generate:
        inputs = tokenizer(PROMPT, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        new_text = tokenizer.decode(output[0, inputs.input_ids.shape[1]:])
        rows.append(Row("5-token greedy generation", True, f"{PROMPT!r} -> {new_text!r}"))
    return rows


def _status(row: Row) -> str:
    return {True: "ok", False: "FAIL", None: "info"}[row.ok]


def report(rows: list[Row]) -> Rendered:
    """The table as HTML (notebook) and text (terminal)."""
    lines = [(r.name, _status(r), r.value + (f"  -> fix: {r.fix}" if r.fix else "")) for r in rows]
    return Rendered(html_table(["check", "status", "detail"], lines), text_table(["check", "status", "detail"], lines))


def main() -> int:
    """Print the table; exit status 1 when anything the workshop needs is missing."""
    rows = run_checks()
    print(report(rows).text)
    failed = [r for r in rows if r.ok is False]
    print(f"\n{len(failed)} problem(s): see the fix on each FAIL line." if failed else f"\nReady: {DEFAULT_MODEL} runs here.")
    return 1 if failed else 0


def widget_check():
    """A slider and a sentence linked through the kernel: if dragging changes the text, widgets work."""
    import ipywidgets as widgets

    from .display import WithFallback

    slider = widgets.IntSlider(value=5, min=1, max=20, description="tokens").add_class("wu-setup-slider")
    label = widgets.Label().add_class("wu-setup-label")

    def describe(value: int) -> str:
        return f"The model would write {value} new tokens."

    slider.observe(lambda change: setattr(label, "value", describe(change["new"])), names="value")
    label.value = describe(slider.value)
    snapshot = Rendered(
        f"<p>[static picture: run the notebook to get a live slider] tokens = {slider.value}</p><p>{label.value}</p>",
        f"[static picture: run the notebook to get a live slider] tokens = {slider.value}\n{label.value}",
    )
    return WithFallback(widgets.VBox([slider, label]), snapshot)
