"""Make a notebook's outputs repeatable: seeds, quiet libraries, no stray progress bars."""

from __future__ import annotations

import os
import warnings

# The libraries whose own warnings and progress bars would clutter the stored outputs.
_QUIET_MODULES = r"(transformers|torch|huggingface_hub|accelerate|gguf|tqdm|jupyter_client|ipywidgets)(\.|$)"


def setup_notebook(seed: int = 0) -> None:
    """Seed every random generator and silence library warnings and progress bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import huggingface_hub.utils
    import transformers

    warnings.filterwarnings("ignore", module=_QUIET_MODULES)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    transformers.set_seed(seed)  # python, numpy and torch (and CUDA when present)


def in_notebook() -> bool:
    """Whether this code runs inside a Jupyter kernel (where widgets can render)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
