"""Measure time and memory honestly: warm-up, repeats, median; prefill against decode."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Run fn warmup times untimed, then repeats times; return the median wall time in seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def prefill_seconds(model, input_ids: torch.Tensor, *, logits_to_keep: int = 0, repeats: int = 3) -> float:
    """Median time of one forward pass over the whole prompt (0 keeps logits for every position)."""
    return median_seconds(lambda: model(input_ids, logits_to_keep=logits_to_keep, use_cache=True), repeats=repeats)


@torch.inference_mode()
def decode_seconds_per_token(model, input_ids: torch.Tensor, n_tokens: int = 16, *, repeats: int = 3) -> float:
    """Median time per new token when decoding one position per pass with the KV cache."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}")

    def decode() -> None:
        out = model(input_ids, use_cache=True, logits_to_keep=1)  # prefill, not timed below
        cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(n_tokens):
            out = model(next_id, past_key_values=cache, use_cache=True)
            cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times.append((time.perf_counter() - start) / n_tokens)

    times: list[float] = []
    decode()  # warm-up
    times.clear()
    for _ in range(repeats):
        decode()
    return statistics.median(times)


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (NaN where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
