"""Measure time and memory honestly, all in one place: warm-up, repeats, median; prefill against decode.

The timers of notebooks 02 (prefill and decode) and 06 (two-pass against batched guidance), and those the
bench (bench.py) reports: memory bandwidth, peak memory, manual loop against generate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .display import Rendered, progress, table
from .models import context_length
from .paths import positive_int
from .tokens import token_id_rows

# Plain English to time prompts with: the content does not change the time, only the length does.
PASSAGE = ("The river runs past the old mill and under the stone bridge, where children wait for the boats "
           "to come back in the evening.")


def _check_repeats(repeats: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats!r}. Fix: repeats=3 takes the median of 3 runs.")


def _check_n_tokens(n_tokens: int) -> None:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, a whole number, got {n_tokens!r}. Fix: for example "
                         "n_tokens=16.")


def _prompt_row(model, input_ids) -> torch.Tensor:
    """The prompt as one checked row [1, positions] on the model's device (a list or 1-D ids are fine)."""
    return token_id_rows(input_ids, "input_ids", vocab_size=getattr(model.config, "vocab_size", None),
                         one_row=True).to(model.device)


def interleaved_medians(fns: Sequence[Callable[[], object]], *, repeats: int = 3) -> list[float]:
    """Median wall time of each fn, run in turns (fn 1, fn 2, ..., then again), so that a slow spell hits all alike."""
    _check_repeats(repeats)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(fn_times) for fn_times in times]


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Run fn warmup times untimed, then repeats times; return the median wall time in seconds."""
    _check_repeats(repeats)
    for _ in range(warmup):
        fn()
    return interleaved_medians([fn], repeats=repeats)[0]


@torch.inference_mode()
def prefill_seconds(model, input_ids: torch.Tensor, *, logits_to_keep: int = 0, repeats: int = 3) -> float:
    """Median time of one forward pass over the whole prompt (0 keeps logits for every position)."""
    input_ids = _prompt_row(model, input_ids)
    return median_seconds(lambda: model(input_ids, logits_to_keep=logits_to_keep, use_cache=True), repeats=repeats)


@torch.inference_mode()
def greedy_step_seconds(model, input_ids: torch.Tensor, n_tokens: int, *, use_cache: bool,
                        on_step: Callable[[], object] | None = None) -> list[float]:
    """One greedy run; the seconds each new token took (the first includes the prefill), with or without the cache."""
    _check_n_tokens(n_tokens)
    ids = _prompt_row(model, input_ids)
    limit = context_length(model)
    if limit is not None and ids.shape[1] + n_tokens > limit:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {n_tokens} new ones exceed the context of {limit}. "
                         f"Fix: ask for at most {limit - ids.shape[1]} new tokens.")
    seconds, past_key_values, step_input = [], None, ids
    for _ in range(n_tokens):
        start = time.perf_counter()
        if use_cache:  # feed only the new position; earlier keys and values come from the cache
            out = model(step_input, past_key_values=past_key_values, use_cache=True, logits_to_keep=1)
            past_key_values = out.past_key_values
        else:  # re-feed the whole sequence every step
            out = model(ids, use_cache=False, logits_to_keep=1)
        next_token_id = out.logits[:, -1:].argmax(dim=-1)
        ids = torch.cat([ids, next_token_id], dim=-1)
        step_input = next_token_id
        seconds.append(time.perf_counter() - start)
        if on_step is not None:  # outside the timed part (a progress bar, say)
            on_step()
    return seconds


def prefill_then_decode(model, input_ids: torch.Tensor, n_tokens: int = 8) -> tuple[float, float]:
    """One timed greedy run: seconds to the first new token (prefill), then seconds per decoded token after it."""
    _check_n_tokens(n_tokens)
    seconds = greedy_step_seconds(model, input_ids, n_tokens + 1, use_cache=True)
    return seconds[0], sum(seconds[1:]) / n_tokens


def decode_seconds_per_token(model, input_ids: torch.Tensor, n_tokens: int = 16, *, repeats: int = 3) -> float:
    """Median time per new token when decoding one position per pass with the KV cache."""
    _check_n_tokens(n_tokens)
    _check_repeats(repeats)
    prefill_then_decode(model, input_ids, n_tokens)  # warm-up
    return statistics.median(prefill_then_decode(model, input_ids, n_tokens)[1] for _ in range(repeats))


# --- memory: peak resident, peak tensor bytes, bandwidth ---------------------------------------------

def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (NaN where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side writes start/stop lines there, past Python's sys.stderr."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensor memory that fn allocated and still held at once (the weights and older tensors excluded).

    Read from the PyTorch profiler's record of every allocation and free made by the CPU (or GPU) allocator
    while fn ran: the running sum of their sizes, at its highest. This counts the KV caches, the activations
    of each forward pass (hidden states, attention and MLP intermediates, the logits) and kernel workspaces,
    and nothing that the Python process holds otherwise (unlike the resident-set size).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _quiet_stderr(), profile(activities=activities, profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def weight_bytes_per_token(model) -> int:
    """Bytes of weights read for one decoded token: every weight once, but one row of an untied input embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() counts tied weights once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight is not embedding:  # untied: the lookup reads a single row
        total -= (embedding.shape[0] - 1) * embedding.shape[1] * embedding.element_size()
    return total


def copy_bandwidth(n_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """Memory bandwidth in bytes/s from dst.copy_(src) of n_bytes: each copy reads n_bytes and writes n_bytes."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), repeats=repeats, warmup=1)
    return 2 * src.numel() * 4 / seconds


# --- classifier-free guidance, two passes against one doubled batch (notebook 06) --------------------

def cache_bytes(caches) -> int:
    """Bytes held by the keys and values of these DynamicCaches."""
    from .kv_cache import measured_cache_bytes  # (kv_cache imports this module)

    return sum(measured_cache_bytes(cache) for cache in caches)


def measure_cfg_paths(model, input_ids, max_new_tokens: int, guidance_scale: float, *, negative_prompt_ids=None,
                      repeats: int = 3) -> dict:
    """Time per new token and peak tensor memory of the two-pass and the batched CFG paths, on the same prompt.

    Both paths make exactly max_new_tokens tokens (no stop at the end of turn). For each path, medians over `repeats` runs after one warm-up: prefill_seconds (the time to the first
    new token: both branches' prompts), decode_seconds_per_token (each later token: one new position per
    branch) and seconds_per_token (the whole run divided by the new tokens). peak_bytes is
    peak_tensor_bytes of one run (the most tensor bytes alive at once, weights excluded); cache_bytes the
    KV cache(s) held at the end. same_tokens says whether both paths wrote the same ids.
    """
    from .cfg import _guided_loop  # (cfg's own loop, with a clock; cfg is imported only when needed)

    _check_repeats(repeats)
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens is {max_new_tokens}, so decoding cannot be timed apart from "
                         "the prefill. Fix: ask for at least 2.")
    if guidance_scale == 1:
        raise ValueError("guidance_scale=1 turns guidance off, so both paths are plain greedy. Fix: measure with "
                         "another scale, e.g. 1.5.")
    figures, outputs = {}, {}
    for name, batched in (("two_pass", False), ("batched", True)):
        def run(batched=batched, clock=None):
            return _guided_loop(model, input_ids, max_new_tokens, guidance_scale, negative_prompt_ids, batched, None,
                                clock=clock, stop_at_eos=False)  # always max_new_tokens, as timing runs do

        ids, _, branches = run()  # the warm-up, and the output
        new_tokens = ids.shape[1] - torch.as_tensor(input_ids).reshape(1, -1).shape[1]
        prefill, decode, total = [], [], []
        for _ in range(repeats):
            start, clock = time.perf_counter(), []
            run(clock=clock)
            prefill.append(clock[0] - start)
            total.append(clock[-1] - start)
            if len(clock) > 1:
                decode.append((clock[-1] - clock[0]) / (len(clock) - 1))
        outputs[name] = ids
        figures[name] = {"prefill_seconds": statistics.median(prefill),
                         "decode_seconds_per_token": statistics.median(decode) if decode else float("nan"),
                         "seconds_per_token": statistics.median(total) / new_tokens, "new_tokens": new_tokens,
                         "peak_bytes": peak_tensor_bytes(run), "cache_bytes": cache_bytes(branches.caches())}
    figures["same_tokens"] = torch.equal(outputs["two_pass"], outputs["batched"])
    return figures


# --- prefill against decode over prompt lengths (notebook 02) ------------------------------------------

@dataclass
class StepPoint:
    """Time of one decoding step at one sequence length, re-feeding everything against reading the cache."""

    positions: int  # tokens already in the sequence when the step starts
    uncached_s: float  # one pass over all those positions
    cached_s: float  # one pass over the newest position, the rest read from the cache

    @property
    def speedup(self) -> float:
        return self.uncached_s / self.cached_s


@torch.inference_mode()
def step_seconds_sweep(model, input_ids: torch.Tensor, lengths: Sequence[int] = (16, 64, 256), *,
                       repeats: int = 3) -> list[StepPoint]:
    """Median time of one new token at each sequence length, without the cache (all positions) and with it (one)."""
    ids = _prompt_row(model, input_ids)
    lengths = check_sweep(lengths, ids, repeats, shortest=2)  # one position from the cache, at least
    points = []
    for n in progress(lengths, desc="with and without the cache"):
        uncached = median_seconds(lambda: model(ids[:, :n], use_cache=False, logits_to_keep=1), repeats=repeats)
        cache = model(ids[:, : n - 1], use_cache=True, logits_to_keep=1).past_key_values

        def cached_step():
            model(ids[:, n - 1: n], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)  # drop the position just added (v5: a negative count), so every repeat sees the same cache

        points.append(StepPoint(n, uncached, median_seconds(cached_step, repeats=repeats)))
    return points


def step_table(points: Sequence[StepPoint]) -> Rendered:
    """The sweep as a table: ms per new token without and with the cache, and their ratio."""
    return table(["positions", "no cache (ms/token)", "with cache (ms/token)", "cache speedup"],
                 [(p.positions, f"{1000 * p.uncached_s:.0f}", f"{1000 * p.cached_s:.0f}", f"{p.speedup:.1f}x")
                  for p in points])


def plot_step_seconds(points: Sequence[StepPoint]) -> None:
    """Time per new token against sequence length, with and without the cache (matplotlib)."""
    import matplotlib.pyplot as plt

    x = [p.positions for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3))
    ax.plot(x, [1000 * p.uncached_s for p in points], marker="o", color="#e45756", label="no cache: re-feed all")
    ax.plot(x, [1000 * p.cached_s for p in points], marker="o", color="#4c78a8", label="KV cache: one position")
    ax.set(xlabel="tokens in the sequence", ylabel="ms per new token", title="time per new token", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()


def passage_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """Ids [1, n_tokens] of a plain passage repeated and cut to exactly n_tokens tokens."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, a whole number, got {n_tokens!r}. Fix: ask for a prompt of "
                         "1 token or more.")
    piece = tokenizer(" " + PASSAGE, add_special_tokens=False).input_ids  # the space joins the passage's repeats
    return torch.tensor([(piece * (n_tokens // len(piece) + 1))[:n_tokens]])


def check_sweep(lengths: Sequence[int], input_ids: torch.Tensor, repeats: int, *, shortest: int = 1) -> list[int]:
    """The prompt lengths of a sweep, checked: whole numbers >= shortest, none beyond input_ids; repeats >= 1."""
    lengths = list(lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < shortest for n in lengths):
        raise ValueError(f"lengths must be positive whole numbers of at least {shortest}, got {lengths}. Fix: for "
                         "example (16, 64, 256).")
    _check_repeats(repeats)
    if max(lengths) > input_ids.shape[-1]:
        raise ValueError(f"The longest length is {max(lengths)} but input_ids holds {input_ids.shape[-1]} tokens. "
                         f"Fix: pass a longer prompt, e.g. passage_ids(tokenizer, {max(lengths)}).")
    return lengths


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
    input_ids = _prompt_row(model, input_ids)
    lengths = check_sweep(lengths, input_ids, repeats)
    _check_n_tokens(n_tokens)
    limit = context_length(model)
    if limit is not None and max(lengths) + n_tokens > limit:
        raise ValueError(f"{max(lengths)} prompt tokens + {n_tokens} new ones exceed the context of {limit}. "
                         f"Fix: keep lengths at or below {limit - n_tokens}.")
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
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[16, 64, 256, 1024, 2048, 4096])
    parser.add_argument("--tokens", type=positive_int, default=16, help="new tokens decoded per run")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)  # every argument checked before the model loads
    from .models import load_model

    model, tokenizer = load_model()
    points = prefill_decode_sweep(model, passage_ids(tokenizer, max(args.lengths)), args.lengths,
                                  n_tokens=args.tokens, repeats=args.repeats)
    print(sweep_table(points).text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
