"""python -m workshop_utils bench: generation speed and memory on the default model, in one run.

A plain list of functions, one per line of the report: each takes a BenchSetup and returns its Figure
rows. MEASUREMENTS lists them in the order they run; the progress bar counts them. To add a line, write
one more such function and append it to MEASUREMENTS. The timers themselves are in timing.py.
LAST runs after all of them: the peak memory, then the bandwidth bound (it needs the decode rate, and
the copy buffers it allocates would otherwise dominate the peak memory).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .display import text_table
from .generation import greedy_generate
from .paths import output_file, write_text_atomic
from .timing import (copy_bandwidth, greedy_step_seconds, interleaved_medians, measure_cfg_paths, passage_ids,
                     peak_memory_mib, prefill_seconds, weight_bytes_per_token)


@dataclass
class Figure:
    """One measured figure: a key for the JSON file, what it is in words, its value and unit."""

    key: str
    label: str
    value: float
    unit: str


@dataclass
class BenchSetup:
    """What every measurement gets: the model, the prompts, the sizes, and the figures measured before it."""

    model: object
    prompt_ids: torch.Tensor  # [1, n] short prompt for the generation loops
    long_prompt_ids: torch.Tensor  # [1, prefill_tokens] for the prefill rate
    new_tokens: int = 64  # manual loop against generate
    cache_lengths: tuple[int, ...] = (128, 256)  # new tokens at which the cache's speedup is read
    repeats: int = 3
    cfg_tokens: int = 16  # new tokens of each classifier-free guidance run
    copy_bytes: int = 1 << 30  # size of the copied tensor for the bandwidth measurement
    results: dict[str, float] = field(default_factory=dict)


Measurement = Callable[[BenchSetup], list[Figure]]


def _new_tokens(output: torch.Tensor, prompt: torch.Tensor) -> int:
    return output.shape[1] - prompt.shape[1]


@torch.inference_mode()
def measure_manual_vs_generate(s: BenchSetup) -> list[Figure]:
    """Tokens/s of greedy_generate (cached) against model.generate, same prompt, same tokens, medians."""
    ids, n = s.prompt_ids, s.new_tokens
    mask = torch.ones_like(ids)

    def ours():
        return greedy_generate(s.model, ids, n)

    def theirs():
        return s.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)

    ours_ids = ours()  # warm-up, and the proof that both write the same tokens
    if not torch.equal(ours_ids, theirs()):
        raise RuntimeError("greedy_generate and generate wrote different tokens: the comparison would be unfair.")
    ours_s, theirs_s = interleaved_medians([ours, theirs], repeats=s.repeats)
    produced = _new_tokens(ours_ids, ids)
    manual = produced / ours_s
    generate = produced / theirs_s
    return [Figure("manual_tokens_per_s", f"manual cached greedy loop (greedy_generate), {produced} new tokens",
                   manual, "tokens/s"),
            Figure("generate_tokens_per_s", f"model.generate(do_sample=False), same {produced} tokens", generate,
                   "tokens/s"),
            Figure("manual_over_generate", "ratio manual / generate (1.0 or more: ours is as fast)", manual / generate,
                   "x")]


def measure_cache_speedup(s: BenchSetup) -> list[Figure]:
    """One greedy run with the cache and one re-feeding the whole sequence; total times at each length compared."""
    longest = max(s.cache_lengths)

    cached, uncached = (greedy_step_seconds(s.model, s.prompt_ids, longest, use_cache=use_cache)
                        for use_cache in (True, False))
    s.results["decode_s_per_token"] = statistics.median(cached[1:]) if longest > 1 else cached[0]
    return [Figure(f"cache_speedup_{n}", f"KV cache speedup, {n} new tokens: time re-feeding the sequence / "
                   "time with the cache", sum(uncached[:n]) / sum(cached[:n]), "x") for n in s.cache_lengths]


def measure_prefill_decode(s: BenchSetup) -> list[Figure]:
    """Prefill rate of the long prompt in one pass, and the decode rate of the cached run (one position per pass)."""
    n = s.long_prompt_ids.shape[1]
    seconds = prefill_seconds(s.model, s.long_prompt_ids, logits_to_keep=1, repeats=s.repeats)
    if "decode_s_per_token" not in s.results:  # measured by measure_cache_speedup when it ran
        s.results["decode_s_per_token"] = statistics.median(
            greedy_step_seconds(s.model, s.prompt_ids, 17, use_cache=True)[1:])
    decode = 1 / s.results["decode_s_per_token"]
    s.results["decode_tokens_per_s"] = decode
    return [Figure("prefill_tokens_per_s", f"prefill: one pass over a {n}-token prompt", n / seconds, "tokens/s"),
            Figure("decode_tokens_per_s", "decode: one position per pass with the KV cache (median step)", decode,
                   "tokens/s")]


def measure_cfg(s: BenchSetup, guidance_scale: float = 1.5) -> list[Figure]:
    """Classifier-free guidance two ways (notebook 06): two passes with two caches against one doubled batch."""
    paths = measure_cfg_paths(s.model, s.prompt_ids, s.cfg_tokens, guidance_scale, repeats=s.repeats)
    two, one = paths["two_pass"], paths["batched"]
    return [Figure("cfg_two_pass_ms_per_token", f"CFG g={guidance_scale}, two passes (two caches): time per token",
                   1000 * two["seconds_per_token"], "ms"),
            Figure("cfg_batched_ms_per_token", "CFG, one pass with the batch doubled: time per token",
                   1000 * one["seconds_per_token"], "ms"),
            Figure("cfg_batched_over_two_pass", "CFG time per token, batched / two passes (below 1: batched faster)",
                   one["seconds_per_token"] / two["seconds_per_token"], "x"),
            Figure("cfg_two_pass_peak_mib", "CFG two passes: peak tensor memory (weights excluded)",
                   two["peak_bytes"] / 2**20, "MiB"),
            Figure("cfg_batched_peak_mib", "CFG batched: peak tensor memory (weights excluded)",
                   one["peak_bytes"] / 2**20, "MiB")]


def measure_bandwidth_bound(s: BenchSetup) -> list[Figure]:
    """Decode rate against the bound set by reading every weight once per token at the copy bandwidth."""
    if "decode_tokens_per_s" not in s.results:  # no decode rate measured: nothing to set against the bound
        return []
    per_token = weight_bytes_per_token(s.model)
    bandwidth = copy_bandwidth(s.copy_bytes, s.repeats)
    bound = bandwidth / per_token
    decode = s.results["decode_tokens_per_s"]
    return [Figure("weight_bytes_per_token", "weight bytes read per decoded token", per_token / 1e6, "MB"),
            Figure("copy_bandwidth", f"copy bandwidth: (read + write bytes) / time of dst.copy_(src), "
                   f"{s.copy_bytes / 2**20:,.0f} MiB tensor", bandwidth / 1e9, "GB/s"),
            Figure("bandwidth_bound_tokens_per_s", "bandwidth bound: copy bandwidth / weight bytes per token", bound,
                   "tokens/s"),
            Figure("decode_fraction_of_bound", "decode tokens/s as a fraction of that bound", decode / bound, "")]


def measure_peak_memory(s: BenchSetup) -> list[Figure]:
    """Peak resident memory of this process so far (before the bandwidth test's buffers)."""
    return [Figure("peak_rss_mib", "peak resident memory: model + generation runs", peak_memory_mib(), "MiB")]


@torch.inference_mode()
def measure_handwritten_decode(s: BenchSetup) -> list[Figure]:
    """Decode tokens/s of notebook 08's hand-written forward (llama.greedy_generate) against generate's, alternating."""
    from . import llama

    ids, n = s.prompt_ids, s.new_tokens
    weights = llama.from_model(s.model)

    def ours():
        return llama.greedy_generate(weights, ids, n, eos_token_id=[])

    def theirs():
        return s.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False)

    if not torch.equal(ours(), theirs()):  # warm-up, and the proof that both write the same tokens
        raise RuntimeError("llama.greedy_generate and generate wrote different tokens: the comparison would be unfair.")
    ours_s, theirs_s = interleaved_medians([ours, theirs], repeats=s.repeats)
    handwritten, generate = n / ours_s, n / theirs_s
    return [Figure("handwritten_decode_tokens_per_s", f"hand-written forward (llama.greedy_generate), {n} new tokens",
                   handwritten, "tokens/s"),
            Figure("handwritten_generate_tokens_per_s", f"model.generate(do_sample=False), same {n} tokens", generate,
                   "tokens/s"),
            Figure("handwritten_over_generate_decode", "ratio hand-written forward / generate (1.0 or more: as fast)",
                   handwritten / generate, "x")]


# The report's lines, in the order they run; append a function here to add a line to the bench.
MEASUREMENTS: list[Measurement] = [measure_manual_vs_generate, measure_cache_speedup, measure_prefill_decode,
                                   measure_cfg,
                                   measure_handwritten_decode]
# Always after MEASUREMENTS: the peak memory before the bandwidth test's buffers; the bound needs the decode rate.
LAST: list[Measurement] = [measure_peak_memory, measure_bandwidth_bound]


def run_bench(s: BenchSetup, measurements: list[Measurement] | None = None, *,
              show_progress: bool = False) -> list[Figure]:
    """Run the measurements in order, then LAST; return every figure (a progress bar counts the functions)."""
    steps = [*(MEASUREMENTS if measurements is None else measurements), *LAST]
    figures = []
    with tqdm(steps, desc="bench", unit="line", file=sys.stderr, leave=False, disable=not show_progress) as bar:
        for measure in bar:
            bar.set_description(measure.__name__.removeprefix("measure_").replace("_", " "))
            figures += measure(s)
            s.results.update({f.key: f.value for f in figures})
    return figures


def report(figures: list[Figure]) -> str:
    """The figures as an aligned text table."""
    def shown(value: float) -> str:
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"

    return text_table(["figure", "value", "unit"], [(f.label, shown(f.value), f.unit) for f in figures])


def machine() -> dict[str, str | int]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "system": platform.system()}


def bench(model, tokenizer, json_path: str | None = None, *, prompt_tokens: int = 16, prefill_tokens: int = 512,
          **sizes) -> list[Figure]:
    """Run every measurement on model, print the figures, write them to json_path when given, and return them."""
    path = output_file(json_path, "bench JSON file") if json_path else None  # before a minute of measuring
    started = time.perf_counter()
    setup = BenchSetup(model, passage_ids(tokenizer, prompt_tokens), passage_ids(tokenizer, prefill_tokens), **sizes)
    figures = run_bench(setup, show_progress=True)
    elapsed = time.perf_counter() - started
    print(f"bench: {type(model).__name__}, float32, {machine()['threads']} threads, torch {torch.__version__}, "
          f"{model.device.type}")
    print(report(figures))
    print(f"(measured in {elapsed:.0f} s; timings vary with the machine and whatever else runs on it)")
    if path:
        settings = {"new_tokens": setup.new_tokens, "cache_lengths": list(setup.cache_lengths),
                    "prompt_tokens": prompt_tokens, "prefill_tokens": prefill_tokens, "repeats": setup.repeats,
                    "copy_bytes": setup.copy_bytes}
        write_text_atomic(path, json.dumps({"figures": [asdict(f) for f in figures], "settings": settings,
                                            "machine": machine(), "seconds": round(elapsed, 1)}, indent=2) + "\n")
        print(f"wrote {path}")
    return figures


def main(json_path: str | None = None) -> int:
    """Measure the default model once and print the figures (and write them to json_path when given)."""
    from .models import load_model
    from .notebook import setup_notebook

    setup_notebook(seed=0)
    model, tokenizer = load_model(device="cpu")
    bench(model, tokenizer, json_path)
    return 0
