"""The bench's logic on a tiny random model: every figure present and sensible, the JSON written (no timing asserted)."""

import json
import math

import pytest
import torch

from workshop_utils import bench as bench_module
from workshop_utils.bench import MEASUREMENTS, BenchSetup, Figure, bench, report, run_bench

SIZES = {"prompt_tokens": 6, "prefill_tokens": 24, "new_tokens": 3, "cache_lengths": (4, 8), "repeats": 1,
         "cfg_tokens": 3, "copy_bytes": 1 << 20}
KEYS = ["manual_tokens_per_s", "generate_tokens_per_s", "manual_over_generate", "cache_speedup_4", "cache_speedup_8",
        "prefill_tokens_per_s", "decode_tokens_per_s", "cfg_two_pass_ms_per_token", "cfg_batched_ms_per_token",
        "cfg_batched_over_two_pass", "cfg_two_pass_peak_mib", "cfg_batched_peak_mib", "handwritten_decode_tokens_per_s",
        "handwritten_generate_tokens_per_s", "handwritten_over_generate_decode", "peak_rss_mib", "weight_bytes_per_token", "copy_bandwidth",
        "bandwidth_bound_tokens_per_s", "decode_fraction_of_bound"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_model, tokenizer):
    """A tiny Llama with the default tokenizer's vocabulary, so the bench's own prompts fit it."""
    return tiny_model("llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=None, pad_token_id=0)


def test_bench_prints_and_writes_every_figure(tiny_llama, tokenizer, tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    figures = bench(tiny_llama, tokenizer, str(path), **SIZES)
    assert [f.key for f in figures] == KEYS
    assert all(isinstance(f.value, float) and math.isfinite(f.value) and f.value > 0 for f in figures)
    byte_count = next(f.value for f in figures if f.key == "weight_bytes_per_token")
    assert byte_count == sum(p.numel() * 4 for p in tiny_llama.parameters()) / 1e6  # tied: the whole matrix is read
    printed = capsys.readouterr().out
    for f in figures:
        assert f.label in printed
    assert "read + write" in printed  # the bandwidth's definition is in the output
    saved = json.loads(path.read_text())
    assert [f["key"] for f in saved["figures"]] == KEYS
    assert saved["settings"]["cache_lengths"] == [4, 8] and saved["settings"]["new_tokens"] == 3
    assert saved["machine"]["threads"] >= 1


def test_bench_without_json_writes_nothing(tiny_llama, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench(tiny_llama, tokenizer, None, **SIZES)
    assert list(tmp_path.iterdir()) == []


def test_a_new_measurement_is_one_function_in_the_list(tiny_llama, tokenizer, monkeypatch):
    def measure_extra(s: BenchSetup) -> list[Figure]:
        return [Figure("extra", "an added line", s.results["decode_tokens_per_s"] * 2, "tokens/s")]

    monkeypatch.setattr(bench_module, "MEASUREMENTS", [*MEASUREMENTS, measure_extra])
    figures = bench(tiny_llama, tokenizer, None, **SIZES)
    keys = [f.key for f in figures]
    assert keys.index("extra") == keys.index("handwritten_over_generate_decode") + 1
    values = {f.key: f.value for f in figures}
    assert values["extra"] == pytest.approx(2 * values["decode_tokens_per_s"])


@pytest.mark.slow
def test_run_bench_alone_without_a_progress_bar(tiny_llama):
    ids = torch.randint(3, 100, (1, 5))
    s = BenchSetup(tiny_llama, ids, torch.randint(3, 100, (1, 12)), new_tokens=2, cache_lengths=(3,), repeats=1,
                   copy_bytes=1 << 20)
    figures = run_bench(s, MEASUREMENTS[1:])  # skipping a measurement leaves its figures out, nothing else
    assert [f.key for f in figures][:3] == ["cache_speedup_3", "prefill_tokens_per_s", "decode_tokens_per_s"]
    assert "decode tokens/s as a fraction of that bound" in report(figures)


def test_progress_bar_counts_the_functions(capsys):
    def measure_one(s: BenchSetup) -> list[Figure]:
        return [Figure("one", "a line", 1.0, "")]

    ids = torch.tensor([[1, 2]])
    figures = run_bench(BenchSetup(None, ids, ids), [measure_one], show_progress=True)
    assert [f.key for f in figures] == ["one", "peak_rss_mib"]  # no decode rate: no bandwidth bound
    shown = capsys.readouterr().err
    assert "0/3" in shown and "bandwidth bound" in shown  # the function, then the peak memory and the bound
