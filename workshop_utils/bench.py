"""python -m workshop_utils bench: generation speed and memory on the default model, in one run.

Each measurement is a function of a BenchSetup that returns Figure rows; MEASUREMENTS lists them in the
order they run. To add a line (say, classifier-free guidance), write one more such function and append
it to MEASUREMENTS. The peak memory and the bandwidth bound are taken after all of them: the bound needs
the decode rate, and the copy buffers it allocates would otherwise dominate the peak memory.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .display import text_table
from .generation import greedy_generate
from .kv_cache import greedy_step_seconds
from .timing import median_seconds, passage_ids, peak_memory_mib, prefill_seconds


@dataclass
class Figure:
    """One measured figure: a key for the JSON file, what it is in words, its value and unit."""

    key: str
    label: str
    value: float
    unit: str


@dataclass
class BenchSetup:
    """What every measurement gets: the model, the prompts, the sizes, a progress bar, and earlier figures."""

    model: object
    prompt_ids: torch.Tensor  # [1, n] short prompt for the generation loops
    long_prompt_ids: torch.Tensor  # [1, prefill_tokens] for the prefill rate
    new_tokens: int = 64  # manual loop against generate
    cache_lengths: tuple[int, ...] = (128, 256)  # new tokens at which the cache's speedup is read
    repeats: int = 3
    cfg_tokens: int = 16  # new tokens of each classifier-free guidance run
    copy_bytes: int = 1 << 30  # size of the copied tensor for the bandwidth measurement
    bar: object = None  # a tqdm bar (None: no progress shown)
    results: dict[str, float] = field(default_factory=dict)

    def tick(self, steps: int = 1) -> None:
        """Advance the progress bar by steps forward passes."""
        if self.bar is not None:
            self.bar.update(steps)


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

    ours_ids, theirs_ids = ours(), theirs()  # warm-up, and the proof that both write the same tokens
    s.tick(2 * n)
    if not torch.equal(ours_ids, theirs_ids):
        raise RuntimeError("greedy_generate and generate wrote different tokens: the comparison would be unfair.")
    ours_s, theirs_s = [], []
    for _ in range(s.repeats):  # alternate, so that a slow spell of a shared machine hits both
        for fn, times in ((ours, ours_s), (theirs, theirs_s)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            s.tick(n)
    produced = _new_tokens(ours_ids, ids)
    manual = produced / statistics.median(ours_s)
    generate = produced / statistics.median(theirs_s)
    return [Figure("manual_tokens_per_s", f"manual cached greedy loop (greedy_generate), {produced} new tokens",
                   manual, "tokens/s"),
            Figure("generate_tokens_per_s", f"model.generate(do_sample=False), same {produced} tokens", generate,
                   "tokens/s"),
            Figure("manual_over_generate", "ratio manual / generate (1.0 or more: ours is as fast)", manual / generate,
                   "x")]


def measure_cache_speedup(s: BenchSetup) -> list[Figure]:
    """One greedy run with the cache and one re-feeding the whole sequence; total times at each length compared."""
    longest = max(s.cache_lengths)

    cached, uncached = (greedy_step_seconds(s.model, s.prompt_ids, longest, use_cache=use_cache, on_step=s.tick)
                        for use_cache in (True, False))
    s.results["decode_s_per_token"] = statistics.median(cached[1:]) if longest > 1 else cached[0]
    return [Figure(f"cache_speedup_{n}", f"KV cache speedup, {n} new tokens: time re-feeding the sequence / "
                   "time with the cache", sum(uncached[:n]) / sum(cached[:n]), "x") for n in s.cache_lengths]


def measure_prefill_decode(s: BenchSetup) -> list[Figure]:
    """Prefill rate of the long prompt in one pass, and the decode rate of the cached run (one position per pass)."""
    n = s.long_prompt_ids.shape[1]
    seconds = prefill_seconds(s.model, s.long_prompt_ids, logits_to_keep=1, repeats=s.repeats)
    s.tick(n * (s.repeats + 1))
    if "decode_s_per_token" not in s.results:  # measured by measure_cache_speedup when it ran
        s.results["decode_s_per_token"] = statistics.median(
            greedy_step_seconds(s.model, s.prompt_ids, 17, use_cache=True, on_step=s.tick)[1:])
    decode = 1 / s.results["decode_s_per_token"]
    s.results["decode_tokens_per_s"] = decode
    return [Figure("prefill_tokens_per_s", f"prefill: one pass over a {n}-token prompt", n / seconds, "tokens/s"),
            Figure("decode_tokens_per_s", "decode: one position per pass with the KV cache (median step)", decode,
                   "tokens/s")]


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


def measure_bandwidth_bound(s: BenchSetup) -> list[Figure]:
    """Decode rate against the bound set by reading every weight once per token at the copy bandwidth."""
    per_token = weight_bytes_per_token(s.model)
    bandwidth = copy_bandwidth(s.copy_bytes, s.repeats)
    s.tick()
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


def measure_cfg(s: BenchSetup, guidance_scale: float = 1.5) -> list[Figure]:
    """Classifier-free guidance two ways (notebook 06): two passes with two caches against one doubled batch."""
    from .cfg import measure_cfg_paths

    paths = measure_cfg_paths(s.model, s.prompt_ids, s.cfg_tokens, guidance_scale, repeats=s.repeats)
    s.tick(_cfg_passes(s))
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


def _cfg_passes(s: BenchSetup) -> int:
    # Per token, 2 forward passes on the two-pass path and 1 on the batched one; per path, a warm-up,
    # the timed repeats and one run for the peak memory.
    return 3 * s.cfg_tokens * (s.repeats + 2)

@torch.inference_mode()
def measure_handwritten_decode(s: BenchSetup) -> list[Figure]:
    """Decode tokens/s of the hand-written forward (notebook 08's llama.greedy_generate) against generate's, alternating."""
    from . import llama

    ids, n = s.prompt_ids, s.new_tokens  # 64 by default
    weights = llama.from_model(s.model)

    def ours():
        return llama.greedy_generate(weights, ids, n, eos_token_id=[])

    def theirs():
        return s.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False)

    if not torch.equal(ours(), theirs()):  # warm-up, and the proof that both write the same tokens
        raise RuntimeError("llama.greedy_generate and generate wrote different tokens: the comparison would be unfair.")
    s.tick(2 * n)
    seconds = {ours: [], theirs: []}
    for _ in range(s.repeats):  # alternate, so that a slow spell of a shared machine hits both
        for fn in (ours, theirs):
            start = time.perf_counter()
            fn()
            seconds[fn].append(time.perf_counter() - start)
            s.tick(n)
    handwritten, generate = (n / statistics.median(seconds[fn]) for fn in (ours, theirs))
    return [Figure("handwritten_decode_tokens_per_s", f"hand-written forward (llama.greedy_generate), {n} new tokens",
                   handwritten, "tokens/s"),
            Figure("handwritten_generate_tokens_per_s", f"model.generate(do_sample=False), same {n} tokens", generate,
                   "tokens/s"),
            Figure("handwritten_over_generate_decode", "ratio hand-written forward / generate (1.0 or more: as fast)",
                   handwritten / generate, "x")]


# The generation measurements, in order; append a function here to add a line to the bench.
MEASUREMENTS: list[Measurement] = [measure_manual_vs_generate, measure_cache_speedup, measure_prefill_decode,
                                   measure_cfg, measure_handwritten_decode]


def planned_steps(s: BenchSetup, measurements: list[Measurement]) -> int:
    """Forward passes the built-in measurements will run (for the progress bar's length)."""
    steps = {measure_manual_vs_generate: (2 + 2 * s.repeats) * s.new_tokens,
             measure_cache_speedup: 2 * max(s.cache_lengths),
             measure_prefill_decode: s.long_prompt_ids.shape[1] * (s.repeats + 1),
             measure_cfg: _cfg_passes(s)}
    return sum(steps.get(m, 0) for m in measurements) + 1


def run_bench(s: BenchSetup, measurements: list[Measurement] | None = None) -> list[Figure]:
    """Run the measurements in order, then the peak memory and the bandwidth bound; return every figure."""
    measurements = MEASUREMENTS if measurements is None else measurements
    figures = []
    for measure in measurements:
        if s.bar is not None:
            s.bar.set_description(measure.__name__.removeprefix("measure_").replace("_", " "))
        figures += measure(s)
        s.results.update({f.key: f.value for f in figures})
    figures += measure_peak_memory(s)
    if "decode_tokens_per_s" in s.results:
        figures += measure_bandwidth_bound(s)
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
    started = time.perf_counter()
    setup = BenchSetup(model, passage_ids(tokenizer, prompt_tokens), passage_ids(tokenizer, prefill_tokens), **sizes)
    with tqdm(total=planned_steps(setup, MEASUREMENTS), desc="bench", unit="pass", file=sys.stderr,
              leave=False) as setup.bar:
        figures = run_bench(setup)
    setup.bar = None
    elapsed = time.perf_counter() - started
    print(f"bench: {type(model).__name__}, float32, {machine()['threads']} threads, torch {torch.__version__}, "
          f"{model.device.type}")
    print(report(figures))
    print(f"(measured in {elapsed:.0f} s; timings vary with the machine and whatever else runs on it)")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {"new_tokens": setup.new_tokens, "cache_lengths": list(setup.cache_lengths),
                    "prompt_tokens": prompt_tokens, "prefill_tokens": prefill_tokens, "repeats": setup.repeats,
                    "copy_bytes": setup.copy_bytes}
        path.write_text(json.dumps({"figures": [asdict(f) for f in figures], "settings": settings,
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
