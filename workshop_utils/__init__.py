"""LLM inference, opened up: the plumbing behind the workshop notebooks (one module per concept)."""

from .models import DEFAULT_MODEL, cache_dir, load_model, pick_device, prepare_default_model
from .notebook import setup_notebook

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "cache_dir", "load_model", "pick_device", "prepare_default_model", "setup_notebook"]
