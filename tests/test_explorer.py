"""The sampling widgets' logic without a browser: which candidates are kept, their renormalised probabilities,
the sliders redrawing the chart, and the step-through generator adding the token it shows."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from workshop_utils.display import WithFallback
from workshop_utils.explorer import Stepper, candidates, candidates_chart, next_token_explorer, step_through_generator
from workshop_utils.generation import greedy_generate

TEXT = "The capital of France is"


def _warped(logits, t, k, p):
    scores = logits[None]
    for warper in ([TemperatureLogitsWarper(t)] + ([TopKLogitsWarper(k)] if k else [])
                   + ([TopPLogitsWarper(p)] if p else [])):
        scores = warper(None, scores)
    return scores[0]


@pytest.mark.parametrize(("t", "k", "p"), [(1.0, None, None), (0.5, 5, None), (1.5, None, 0.8), (2.0, 20, 0.9),
                                           (0.3, 3, 0.5)])
def test_kept_set_and_renormalised_probabilities(t, k, p):
    logits = torch.randn(500, generator=torch.Generator().manual_seed(1)) * 2
    found = candidates(logits, temperature=t, top_k=k, top_p=p, n=30)
    reference = _warped(logits, t, k, p)
    expected_probs = reference.softmax(-1)
    assert found.kept_count == int(torch.isfinite(reference).sum())
    order = (logits / t).softmax(-1).argsort(descending=True)[:30].tolist()
    assert [c.token_id for c in found.shown] == order
    for c in found.shown:
        assert c.kept == bool(torch.isfinite(reference[c.token_id]))
        assert c.renormalised == pytest.approx(float(expected_probs[c.token_id]), abs=1e-6)
        assert c.prob == pytest.approx(float((logits / t).softmax(-1)[c.token_id]), abs=1e-6)
    kept = [c for c in found.shown if c.kept]
    if found.kept_count <= 30:  # every kept token is shown: their new probabilities add up to one
        assert sum(c.renormalised for c in kept) == pytest.approx(1.0, abs=1e-5)
    assert all(c.renormalised == 0 for c in found.shown if not c.kept)


def test_chart_greys_what_the_filters_cut():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    shown = candidates_chart(candidates(logits, {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}, top_k=2, n=5), chosen=1)
    lines = shown.text.splitlines()
    assert "2 of 5 tokens kept" in lines[0]
    assert "[kept" in lines[1] and "[kept" in lines[2] and "◀ chosen" in lines[2]
    assert all("[cut" in line and line.endswith("0.000") for line in lines[3:])
    assert shown.html.count("#bbbbbb") == 3


def test_explorer_redraws_when_the_temperature_moves(model, tokenizer):
    explorer = next_token_explorer(model, tokenizer, TEXT)
    assert isinstance(explorer, WithFallback)
    temperature, top_k, top_p, chart = explorer.widget.children
    assert "wu-temperature" in temperature._dom_classes and "wu-explorer-chart" in chart._dom_classes
    before = chart.value
    temperature.value = 2.0
    assert chart.value != before and "temperature 2.00" in chart.value
    top_k.value = 3
    assert "3 of 49,152 tokens kept" in chart.value
    assert "static picture" in explorer.snapshot.text and "Paris" in explorer.snapshot.text


@pytest.mark.slow
def test_greedy_stepper_follows_greedy_generate(model, tokenizer):
    stepper = Stepper(model, tokenizer, TEXT)
    chosen = []
    for _ in range(4):
        token, found = stepper.step()
        assert found.shown[0].token_id == token and found.kept_count == 1
        chosen.append(token)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert chosen == greedy_generate(model, ids, 4, eos_token_id=[])[0, ids.shape[1]:].tolist()
    assert stepper.text() == tokenizer.decode(ids[0].tolist() + chosen)


def test_sampling_stepper_picks_a_kept_token_and_leaves_the_global_seed(model, tokenizer):
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    stepper = Stepper(model, tokenizer, TEXT, temperature=1.5, top_k=5, seed=3)
    for _ in range(3):
        token, found = stepper.step()
        kept = {c.token_id for c in found.shown if c.kept}
        assert token in kept and len(kept) <= 5
    assert torch.equal(torch.rand(1), expected_next)


def test_step_button_adds_one_token(model, tokenizer):
    widget = step_through_generator(model, tokenizer, TEXT)
    button, view = widget.widget.children
    before = view.value
    assert "1 new token(s)" in before and "◀ chosen" in before
    button.click()
    assert "2 new token(s)" in view.value
    assert "static picture" in widget.snapshot.text


def test_empty_text_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="Fix"):
        next_token_explorer(model, tokenizer, "")
    with pytest.raises(ValueError, match="Fix"):
        Stepper(model, tokenizer, "")
