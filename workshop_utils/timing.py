"""Measure time and memory honestly: warm-up, repeats, median; prefill against decode."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .display import Rendered, progress, table

# Plain English to time prompts with: the content does not change the time, only the length does.
PASSAGE = ("The river runs past the old mill and under the stone bridge, where children wait for the boats "
           "to come back in the evening.")


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
def prefill_then_decode(model, input_ids: torch.Tensor, n_tokens: int = 8) -> tuple[float, float]:
    """One timed run: seconds to the first new token (prefill), then seconds per decoded token after it."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}")
    start = time.perf_counter()
    out = model(input_ids, use_cache=True, logits_to_keep=1)  # all prompt positions in one pass
    cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)
    first = time.perf_counter()
    for _ in range(n_tokens):  # then one position per pass, reading the cache
        out = model(next_id, past_key_values=cache, use_cache=True)
        cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return first - start, (time.perf_counter() - first) / n_tokens


def decode_seconds_per_token(model, input_ids: torch.Tensor, n_tokens: int = 16, *, repeats: int = 3) -> float:
    """Median time per new token when decoding one position per pass with the KV cache."""
    if n_tokens < 1 or repeats < 1:
        raise ValueError(f"n_tokens and repeats must be at least 1, got {n_tokens} and {repeats}")
    prefill_then_decode(model, input_ids, n_tokens)  # warm-up
    return statistics.median(prefill_then_decode(model, input_ids, n_tokens)[1] for _ in range(repeats))


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (NaN where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def passage_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """Ids [1, n_tokens] of a plain passage repeated and cut to exactly n_tokens tokens."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}. Fix: ask for a prompt of 1 token or more.")
    piece = tokenizer(" " + PASSAGE, add_special_tokens=False).input_ids  # the space joins the passage's repeats
    return torch.tensor([(piece * (n_tokens // len(piece) + 1))[:n_tokens]])


@dataclass
class SweepPoint:
    """Prefill and decode times measured for one prompt length (medians over the repeats)."""

    prompt_tokens: int
    ttft_s: float  # time to first token: the prefill pass over the whole prompt
    decode_s_per_token: float  # each later token: one position per pass, with the KV cache

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.ttft_s

    @property
    def decode_tokens_per_s(self) -> float:
        return 1 / self.decode_s_per_token


def prefill_decode_sweep(model, input_ids: torch.Tensor, lengths: Sequence[int] = (16, 64, 256, 1024), *,
                         n_tokens: int = 8, repeats: int = 2) -> list[SweepPoint]:
    """Time prefill and decode for prompts made of the first `length` ids of input_ids, for each length."""
    lengths = list(lengths)
    limit = getattr(model.config, "max_position_embeddings", None)
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive whole numbers, got {lengths}. Fix: for example (16, 64, 256, 1024).")
    if n_tokens < 1 or repeats < 1:
        raise ValueError(f"n_tokens and repeats must be at least 1, got {n_tokens} and {repeats}.")
    if max(lengths) > input_ids.shape[-1]:
        raise ValueError(f"The longest length is {max(lengths)} but input_ids holds {input_ids.shape[-1]} tokens. "
                         f"Fix: pass a longer prompt, e.g. passage_ids(tokenizer, {max(lengths)}).")
    if limit is not None and max(lengths) + n_tokens > limit:
        raise ValueError(f"{max(lengths)} prompt tokens + {n_tokens} new ones exceed the context of {limit}. "
                         f"Fix: keep lengths at or below {limit - n_tokens}.")
    input_ids = input_ids.reshape(1, -1).to(model.device)
    prefill_then_decode(model, input_ids[:, : lengths[0]], n_tokens)  # warm-up
    runs = {n: [] for n in lengths}
    for n, _ in progress([(n, r) for n in lengths for r in range(repeats)], desc="prefill + decode"):
        runs[n].append(prefill_then_decode(model, input_ids[:, :n], n_tokens))
    return [SweepPoint(n, statistics.median(t for t, _ in runs[n]), statistics.median(d for _, d in runs[n]))
            for n in lengths]


def sweep_table(points: Sequence[SweepPoint]) -> Rendered:
    """The sweep as a table: time to first token and prefill rate against decode latency and rate."""
    return table(["prompt tokens", "time to first token (ms)", "prefill tokens/s", "decode ms/token", "decode tokens/s"],
                 [(p.prompt_tokens, f"{1000 * p.ttft_s:.0f}", f"{p.prefill_tokens_per_s:.0f}",
                   f"{1000 * p.decode_s_per_token:.1f}", f"{p.decode_tokens_per_s:.1f}") for p in points])


def plot_sweep(points: Sequence[SweepPoint]) -> None:
    """Time to first token and per-token decode latency against prompt length (matplotlib, two panels)."""
    import matplotlib.pyplot as plt

    x = [p.prompt_tokens for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    left.plot(x, [1000 * p.ttft_s for p in points], marker="o")
    left.set(title="prefill: time to first token", ylabel="ms")
    right.plot(x, [1000 * p.decode_s_per_token for p in points], marker="o", color="#e45756")
    right.set(title="decode: time per new token", ylabel="ms")
    for ax in (left, right):
        ax.set(xscale="log", xlabel="prompt length (tokens)", xticks=x, xticklabels=[str(n) for n in x], ylim=(0, None))
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.show()


def main(argv: list[str] | None = None) -> int:
    """Command line: the full prefill/decode sweep on the default model (more lengths and repeats)."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.timing", description=main.__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024, 2048, 4096])
    parser.add_argument("--tokens", type=int, default=16, help="new tokens decoded per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from .models import load_model

    model, tokenizer = load_model()
    points = prefill_decode_sweep(model, passage_ids(tokenizer, max(args.lengths)), args.lengths,
                                  n_tokens=args.tokens, repeats=args.repeats)
    print(sweep_table(points).text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
