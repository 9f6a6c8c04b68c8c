"""Timing helpers: what they run and what they return, never how fast anything is."""

from types import SimpleNamespace

import matplotlib
import pytest
import torch

from workshop_utils import timing
from workshop_utils.timing import (PASSAGE, SweepPoint, copy_bandwidth, decode_seconds_per_token, greedy_step_seconds,
                                   median_seconds, passage_ids, plot_sweep, prefill_decode_sweep, prefill_seconds,
                                   prefill_then_decode, sweep_table, weight_bytes_per_token)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny_llama(tiny_model):
    """A randomly initialised two-layer Llama (vocabulary 64, context 128)."""
    return tiny_model("llama")


@pytest.fixture
def clock(monkeypatch):
    """A fake time.perf_counter for timing.py: it moves only when a test (or a CountingModel's pass) moves it."""
    fake = SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: fake.now))
    return fake


def test_median_seconds_times_the_repeats_not_the_warmup(clock):
    durations = iter([100.0, 100.0, 3.0, 1.0, 2.0, 9.0])  # two warm-ups, then four timed runs

    def run():
        clock.now += next(durations)

    assert median_seconds(run, repeats=4, warmup=2) == 2.5, "the median of 3, 1, 2 and 9"
    assert next(durations, None) is None, "exactly two warm-ups and four repeats ran"
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        median_seconds(lambda: None, repeats=0)


def test_prefill_then_decode_is_one_full_pass_then_single_positions(tiny_llama, counting_model, clock):
    counting = counting_model(tiny_llama, clock, seconds=[5.0, 1.0, 2.0, 3.0])  # the prefill, then 3 steps
    ids = torch.randint(0, 64, (1, 10))
    ttft, per_token = prefill_then_decode(counting, ids, n_tokens=3)
    assert counting.calls == [(10, 0), (1, 10), (1, 11), (1, 12)], "the prompt, then one position on the cache"
    assert (ttft, per_token) == (5.0, 2.0), "the prefill alone, then the mean of the three steps"
    with pytest.raises(ValueError, match="n_tokens must be at least 1"):
        prefill_then_decode(counting, ids, n_tokens=0)


def test_decode_seconds_and_prefill_seconds_are_medians_after_a_warmup(tiny_llama, counting_model, clock):
    ids = torch.randint(0, 64, (1, 6))
    # Each run: a prefill of 100 s, then two decode steps: 50 s each in the warm-up, then 1, 2 and 6 s.
    counting = counting_model(tiny_llama, clock, seconds=[100.0, 50.0, 50.0, 100.0, 1.0, 1.0, 100.0, 2.0, 2.0,
                                                         100.0, 6.0, 6.0])
    assert decode_seconds_per_token(counting, ids, n_tokens=2, repeats=3) == 2.0
    assert counting.fed == [6, 1, 1] * 4, "one warm-up run, then three repeats"
    counting = counting_model(tiny_llama, clock, seconds=[100.0, 4.0, 1.0, 2.0])  # a warm-up, then 3 passes
    assert prefill_seconds(counting, ids, repeats=3) == 2.0
    assert counting.calls == [(6, 0)] * 4
    with pytest.raises(ValueError, match="at least 1"):
        decode_seconds_per_token(tiny_llama, ids, repeats=0)


def test_greedy_step_seconds_one_time_per_token_both_ways(tiny_llama, counting_model, clock):
    ids = torch.tensor([[5, 6, 7]])
    fed = {True: [(3, 0), (1, 3), (1, 4), (1, 5)], False: [(3, 0), (4, 0), (5, 0), (6, 0)]}
    for use_cache in (True, False):
        steps = []
        counting = counting_model(tiny_llama, clock, seconds=[1.0, 2.0, 3.0, 4.0])

        def on_step():
            steps.append(1)
            clock.now += 100  # outside the timed part

        assert greedy_step_seconds(counting, ids, 4, use_cache=use_cache, on_step=on_step) == [1.0, 2.0, 3.0, 4.0]
        assert counting.calls == fed[use_cache] and len(steps) == 4
    assert torch.equal(ids, torch.tensor([[5, 6, 7]])), "the prompt is left as it was"


def test_greedy_step_seconds_rejects_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="n_tokens"):
        greedy_step_seconds(tiny_llama, torch.tensor([[1, 2]]), 0, use_cache=True)
    with pytest.raises(ValueError, match="context"):
        greedy_step_seconds(tiny_llama, torch.tensor([[1, 2]]), 127, use_cache=True)


def test_untied_embedding_counts_one_row(tiny_model):
    model = tiny_model("llama", vocab_size=50, hidden_size=16, intermediate_size=32, tie_word_embeddings=False)
    all_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert weight_bytes_per_token(model) == all_bytes - 49 * 16 * 4


def test_copy_bandwidth_counts_the_bytes_read_and_written(monkeypatch):
    timed = []

    def half_a_second(fn, *, repeats, warmup):
        fn()
        timed.append((repeats, warmup))
        return 0.5

    monkeypatch.setattr(timing, "median_seconds", half_a_second)
    assert copy_bandwidth(1 << 20, repeats=2) == 2 * (1 << 20) / 0.5, "1 MiB read and 1 MiB written in 0.5 s"
    assert timed == [(2, 1)]


def test_passage_ids_have_exactly_the_length_asked(tokenizer):
    for n in (1, 7, 300):
        ids = passage_ids(tokenizer, n)
        assert ids.shape == (1, n) and ids.dtype == torch.long
    text = tokenizer.decode(passage_ids(tokenizer, 300)[0])
    assert text.startswith(f" {PASSAGE} {PASSAGE} "), "the passage, repeated"
    with pytest.raises(ValueError, match="at least 1"):
        passage_ids(tokenizer, 0)


def test_sweep_measures_every_length(tiny_llama, counting_model):
    counting = counting_model(tiny_llama)
    points = prefill_decode_sweep(counting, torch.randint(0, 64, (1, 40)), lengths=(4, 16, 40), n_tokens=2, repeats=2)
    assert [p.prompt_tokens for p in points] == [4, 16, 40]
    assert all(p.ttft_s > 0 and p.decode_s_per_token > 0 for p in points)
    prefills = [n for n in counting.fed if n > 1]
    assert prefills == [4, 4, 4, 16, 16, 40, 40], "a warm-up at the first length, then two runs per length"


@pytest.mark.parametrize("kwargs, message", [
    ({"lengths": ()}, "lengths must be positive whole numbers"),
    ({"lengths": (0, 4)}, "positive whole numbers"),
    ({"lengths": (4.5,)}, "positive whole numbers"),
    ({"lengths": (4, 50)}, "input_ids holds 40 tokens"),
    ({"lengths": (4,), "n_tokens": 0}, "at least 1"),
    ({"lengths": (4,), "repeats": 0}, "at least 1"),
])
def test_sweep_refuses_bad_input_before_any_forward_pass(no_forward_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prefill_decode_sweep(no_forward_model(max_position_embeddings=128), torch.zeros(1, 40, dtype=torch.long), **kwargs)


def test_sweep_refuses_lengths_beyond_the_context(no_forward_model):
    with pytest.raises(ValueError, match="exceed the context of 128") as error:
        prefill_decode_sweep(no_forward_model(max_position_embeddings=128), torch.zeros(1, 200, dtype=torch.long), lengths=(125,), n_tokens=8)
    assert "Fix: keep lengths at or below 120" in str(error.value)


def test_sweep_point_rates_and_table():
    point = SweepPoint(prompt_tokens=100, ttft_s=0.5, decode_s_per_token=0.02)
    assert point.prefill_tokens_per_s == 200 and point.decode_tokens_per_s == 50
    lines = sweep_table([point]).text.splitlines()
    assert lines[0].startswith("prompt tokens") and lines[2].split() == ["100", "500", "200", "20.0", "50.0"]


def test_plot_sweep_draws_two_panels(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    plot_sweep([SweepPoint(16, 0.05, 0.08), SweepPoint(1024, 3.0, 0.09)])
    left, right = plt.gcf().axes
    assert left.get_xscale() == "log" and left.get_ylim()[0] == 0 and right.get_ylim()[0] == 0
    assert list(left.lines[0].get_ydata()) == pytest.approx([50, 3000])
    assert list(right.lines[0].get_ydata()) == pytest.approx([80, 90])
    plt.close("all")


def test_command_line_prints_the_sweep(monkeypatch, capsys, tiny_llama, tokenizer):
    import workshop_utils.models

    monkeypatch.setattr(workshop_utils.models, "load_model", lambda: (tiny_llama, tokenizer))
    monkeypatch.setattr(timing, "passage_ids", lambda tok, n: torch.randint(0, 64, (1, n)))  # the tiny vocabulary
    assert timing.main(["--lengths", "4", "8", "--tokens", "2", "--repeats", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("prompt tokens") and [r.split()[0] for r in rows[2:]] == ["4", "8"]
