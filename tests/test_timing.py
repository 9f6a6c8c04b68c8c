"""Timing helpers: what they run and what they return, never how fast anything is."""

from types import SimpleNamespace

import matplotlib
import pytest
import torch

from workshop_utils import timing
from workshop_utils.timing import (PASSAGE, SweepPoint, decode_seconds_per_token, median_seconds, passage_ids,
                                   plot_sweep, prefill_decode_sweep, prefill_seconds, prefill_then_decode, sweep_table)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialised two-layer Llama: the same code paths as the real model, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


class _CountingModel:
    """Wraps a model and counts forward passes and the positions each one was given."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.config, self.device = model.config, model.device

    def __call__(self, input_ids, **kwargs):
        self.calls.append(input_ids.shape[-1])
        return self.model(input_ids, **kwargs)


def test_median_seconds_runs_warmup_then_repeats():
    calls = []
    seconds = median_seconds(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and seconds >= 0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        median_seconds(lambda: None, repeats=0)


def test_prefill_then_decode_is_one_full_pass_then_single_positions(tiny_model):
    counting = _CountingModel(tiny_model)
    ids = torch.randint(0, 64, (1, 10))
    ttft, per_token = prefill_then_decode(counting, ids, n_tokens=3)
    assert counting.calls == [10, 1, 1, 1]
    assert ttft > 0 and per_token > 0
    with pytest.raises(ValueError, match="n_tokens must be at least 1"):
        prefill_then_decode(counting, ids, n_tokens=0)


def test_decode_seconds_and_prefill_seconds_return_times(tiny_model):
    ids = torch.randint(0, 64, (1, 6))
    counting = _CountingModel(tiny_model)
    assert decode_seconds_per_token(counting, ids, n_tokens=2, repeats=2) > 0
    assert counting.calls == [6, 1, 1] * 3, "one warm-up run, then two repeats"
    assert prefill_seconds(tiny_model, ids, repeats=1) > 0
    with pytest.raises(ValueError, match="at least 1"):
        decode_seconds_per_token(tiny_model, ids, repeats=0)


def test_passage_ids_have_exactly_the_length_asked(tokenizer):
    for n in (1, 7, 300):
        ids = passage_ids(tokenizer, n)
        assert ids.shape == (1, n) and ids.dtype == torch.long
    text = tokenizer.decode(passage_ids(tokenizer, 300)[0])
    assert text.startswith(f" {PASSAGE} {PASSAGE} "), "the passage, repeated"
    with pytest.raises(ValueError, match="at least 1"):
        passage_ids(tokenizer, 0)


def test_sweep_measures_every_length(tiny_model):
    counting = _CountingModel(tiny_model)
    points = prefill_decode_sweep(counting, torch.randint(0, 64, (1, 40)), lengths=(4, 16, 40), n_tokens=2, repeats=2)
    assert [p.prompt_tokens for p in points] == [4, 16, 40]
    assert all(p.ttft_s > 0 and p.decode_s_per_token > 0 for p in points)
    prefills = [n for n in counting.calls if n > 1]
    assert prefills == [4, 4, 4, 16, 16, 40, 40], "a warm-up at the first length, then two runs per length"


class _NoForwardModel:
    config = SimpleNamespace(max_position_embeddings=128)
    device = torch.device("cpu")

    def __call__(self, *args, **kwargs):
        raise AssertionError("a forward pass ran before the input was checked")


@pytest.mark.parametrize("kwargs, message", [
    ({"lengths": ()}, "lengths must be positive whole numbers"),
    ({"lengths": (0, 4)}, "positive whole numbers"),
    ({"lengths": (4.5,)}, "positive whole numbers"),
    ({"lengths": (4, 50)}, "input_ids holds 40 tokens"),
    ({"lengths": (4,), "n_tokens": 0}, "at least 1"),
    ({"lengths": (4,), "repeats": 0}, "at least 1"),
])
def test_sweep_refuses_bad_input_before_any_forward_pass(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prefill_decode_sweep(_NoForwardModel(), torch.zeros(1, 40, dtype=torch.long), **kwargs)


def test_sweep_refuses_lengths_beyond_the_context():
    with pytest.raises(ValueError, match="exceed the context of 128") as error:
        prefill_decode_sweep(_NoForwardModel(), torch.zeros(1, 200, dtype=torch.long), lengths=(125,), n_tokens=8)
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


def test_command_line_prints_the_sweep(monkeypatch, capsys, tiny_model, tokenizer):
    import workshop_utils.models

    monkeypatch.setattr(workshop_utils.models, "load_model", lambda: (tiny_model, tokenizer))
    monkeypatch.setattr(timing, "passage_ids", lambda tok, n: torch.randint(0, 64, (1, n)))  # the tiny vocabulary
    assert timing.main(["--lengths", "4", "8", "--tokens", "2", "--repeats", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("prompt tokens") and [r.split()[0] for r in rows[2:]] == ["4", "8"]
