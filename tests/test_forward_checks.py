"""Notebook 08's checks: each accepts the right answer and names the mistake in a wrong one."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from workshop_utils import llama
from workshop_utils.checks import (CheckFailed, check_attention, check_layer_params, check_logits,
                                   check_steps_against_generate, difference)

BIGGER = LlamaConfig(hidden_size=960, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                     intermediate_size=2560, num_hidden_layers=2, vocab_size=1000)


def test_layer_params_counts_a_real_layer_and_names_mistakes(capsys):
    right = sum(p.numel() for p in LlamaDecoderLayer(BIGGER, layer_idx=0).parameters())
    check_layer_params("layer", right, BIGGER)
    assert "✔ layer" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="two RMSNorm"):
        check_layer_params("layer", right - 2 * 960, BIGGER)
    with pytest.raises(CheckFailed, match="three matrices"):
        check_layer_params("layer", right - 960 * 2560, BIGGER)
    with pytest.raises(CheckFailed, match="k and v have 5 heads, not 15"):
        check_layer_params("layer", right + 2 * 960 * 960 - 2 * 960 * 320, BIGGER)
    with pytest.raises(CheckFailed, match="whole number"):
        check_layer_params("layer", float(right), BIGGER)


def _attention_with(scale=None, shift=1):
    def attend(q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
        n, total = q.shape[2], k.shape[2]
        future = torch.ones(n, total, dtype=torch.bool).triu(total - n + shift)
        return scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    return attend


def test_attention_check_names_the_bug(capsys):
    check_attention("attention", llama.attention)
    check_attention("attention", _attention_with())
    assert capsys.readouterr().out.count("✔") == 2
    with pytest.raises(CheckFailed, match="not divided by sqrt"):
        check_attention("attention", _attention_with(scale=1.0))
    with pytest.raises(CheckFailed, match="divided by head_dim"):
        check_attention("attention", _attention_with(scale=1 / 64))
    with pytest.raises(CheckFailed, match="see the next one"):
        check_attention("attention", _attention_with(shift=2))
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_attention("attention", lambda q, k, v: 1 / 0)


def test_logits_check_names_the_first_position():
    expected = torch.zeros(1, 5, 7)
    check_logits("logits", expected + 1e-6, expected, atol=1e-4)
    wrong = expected.clone()
    wrong[0, 3, 2] = 0.5
    with pytest.raises(CheckFailed, match=r"position 3 is the first off, by up to 5\.00e-01"):
        check_logits("logits", wrong, expected, atol=1e-4)


class _Tokenizer:
    def decode(self, ids):
        return f"<{ids[0]}>"


def test_steps_check_shows_the_gap_where_tokens_part():
    generated = torch.tensor([[1, 2, 3, 4]])
    logits = torch.zeros(2, 6)
    logits[0, 3], logits[1, 4], logits[1, 5] = 1.0, 2.0, 1.5
    check_steps_against_generate("steps", generated, logits, generated, logits, _Tokenizer())
    ours = torch.tensor([[1, 2, 3, 5]])
    with pytest.raises(CheckFailed, match=r"new token 1 differs: yours 5 '<5>', generate's 4 '<4>'; generate's logit "
                                          r"gap between them 5\.00e-01"):
        check_steps_against_generate("steps", ours, logits, generated, logits, _Tokenizer())


def test_difference_says_exactly_0_only_when_it_is():
    a = torch.tensor([1.0, 2.0])
    assert difference(a, a.clone()) == "exactly 0"
    assert difference(a, a + torch.tensor([0.0, 3e-7])) == "2.4e-07"  # float32 spacing near 2
    assert math.isfinite(float(difference(a, a + 1)))
