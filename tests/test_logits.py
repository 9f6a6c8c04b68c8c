"""Logits at every position: the per-position predictions, the table, the explorer, and the checks of notebook 02."""

import pytest
import torch

from workshop_utils.checks import CheckFailed, check_decode_timing, check_first_correct_position
from workshop_utils.logits import next_token_table, position_explorer, predict_positions

PROMPTS = ["A list of colors: red,", "The capital of France is Paris.", "1, 2, 3, 4,"]


@pytest.mark.parametrize("text", PROMPTS)
def test_predictions_match_a_sort_of_the_probabilities(model, tokenizer, text):
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    order = probs.argsort(dim=-1, descending=True)
    rows = predict_positions(model, tokenizer, text, k=3)
    assert [r.position for r in rows] == list(range(len(ids)))
    for p, row in enumerate(rows):
        assert row.top_ids == order[p, :3].tolist()
        assert row.top_probs == pytest.approx(probs[p, order[p, :3]].tolist(), abs=1e-6)
        if p + 1 < len(ids):
            assert row.next_id == ids[p + 1]
            assert row.next_rank == order[p].tolist().index(ids[p + 1]) + 1
            assert row.next_prob == pytest.approx(float(probs[p, ids[p + 1]]), abs=1e-6)
        else:
            assert row.next_id is None and row.next_rank is None


@pytest.mark.slow
@pytest.mark.parametrize("text", PROMPTS)
def test_position_p_predicts_from_its_prefix_alone(model, tokenizer, text):
    rows = predict_positions(model, tokenizer, text, k=1)
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        alone = [int(model(torch.tensor([ids[: p + 1]])).logits[0, -1].argmax()) for p in range(len(ids))]
    assert [r.top_ids[0] for r in rows] == alone


def test_table_has_one_row_per_token_and_marks_the_end(model, tokenizer):
    text = "A list of colors: red,"
    shown = next_token_table(model, tokenizer, text, k=5)
    lines = shown.text.splitlines()
    assert lines[0].split()[:3] == ["pos", "input", "token"]
    assert len(lines) == 2 + len(tokenizer(text).input_ids)
    assert "(end of text)" in lines[-1]
    assert "·colors" in lines[4], "position 2 (·of) was followed by ·colors"
    assert "#bbf7d0" in shown.html, "a real next token inside the top 5 is highlighted"
    assert "<script" not in shown.html.lower()


@pytest.mark.parametrize("kwargs, message", [
    ({"text": "Hello", "k": 0}, "k must be a whole number of at least 1"),
    ({"text": "Hello", "k": -3}, "at least 1"),
    ({"text": "Hello", "k": 2.5}, "whole number"),
    ({"text": "Hello", "k": 50_000}, "more than the vocabulary"),
    ({"text": "", "k": 5}, "text is empty"),
    ({"text": [1, 60_000], "k": 5}, "Token id 60000 is outside"),
])
def test_bad_input_is_refused_before_any_forward_pass(tokenizer, no_forward_model, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        next_token_table(no_forward_model(vocab_size=49152), tokenizer, kwargs["text"], k=kwargs["k"])
    assert "Fix:" in str(error.value)


def test_explorer_follows_its_slider(model, tokenizer):
    explorer = position_explorer(model, tokenizer, "A list of colors: red,", k=4)
    slider, chart = explorer.widget.children
    assert "wu-position-slider" in slider._dom_classes and "wu-position-bars" in chart._dom_classes
    assert (slider.min, slider.max, slider.value) == (0, 6, 6)
    assert "the end of the text" in chart.value
    slider.value = 3
    assert "position 3, after &#x27;A list of colors&#x27;" in chart.value
    assert "◀ really next" in chart.value, "':' is in the top 4 after 'colors'"
    slider.value = 0
    assert "is not in the top 4" in chart.value
    assert "static picture" in explorer._repr_mimebundle_()["text/plain"]


# --- the checks of notebook 02 ---

def _logits_with_top1(top1: list[int], vocab: int = 8) -> torch.Tensor:
    logits = torch.zeros(1, len(top1), vocab)
    logits[0, torch.arange(len(top1)), torch.tensor(top1)] = 5.0
    return logits


def test_check_first_correct_position_explains_the_mistake(tokenizer, capsys):
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    # position 0 predicts 3 (itself), 1 predicts 7 (wrong), 2 predicts 6 (right: token 3 is 6), 3 predicts 7 (right)
    logits = _logits_with_top1([3, 7, 6, 7, 0])
    check_first_correct_position("first", 2, logits, ids, tokenizer)
    assert capsys.readouterr().out == "✔ first\n"
    with pytest.raises(CheckFailed, match="holds the token that was predicted.*at 2"):
        check_first_correct_position("first", 3, logits, ids, tokenizer)
    with pytest.raises(CheckFailed, match="equals the input token at 0 itself"):
        check_first_correct_position("first", 0, logits, ids, tokenizer)
    with pytest.raises(CheckFailed, match="at position 1 the top-1 is"):
        check_first_correct_position("first", 1, logits, ids, tokenizer)
    with pytest.raises(CheckFailed, match="from 0 to 4"):
        check_first_correct_position("first", 9, logits, ids, tokenizer)
    with pytest.raises(CheckFailed, match="answer is None"):
        check_first_correct_position("first", 0, _logits_with_top1([0, 0, 0, 0, 0]), ids, tokenizer)


def test_check_first_correct_position_later_answer(tokenizer):
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    logits = _logits_with_top1([4, 0, 6, 7, 0])  # right at 0, 2 and 3
    with pytest.raises(CheckFailed, match="position 0 comes first"):
        check_first_correct_position("first", 2, logits, ids, tokenizer)


def test_check_decode_timing_names_the_usual_mistakes(capsys):
    stamps = [10.0, 11.0, 11.1, 11.2, 11.3]  # prefill 1 s, then three tokens of 0.1 s
    check_decode_timing("timing", 1.0, 0.1, stamps)
    assert capsys.readouterr().out == "✔ timing\n"
    with pytest.raises(CheckFailed, match="the prefill included"):
        check_decode_timing("timing", 1.0, 1.3 / 4, stamps)
    with pytest.raises(CheckFailed, match="divide by 3"):
        check_decode_timing("timing", 1.0, 0.3 / 4, stamps)
    with pytest.raises(CheckFailed, match="whole run"):
        check_decode_timing("timing", 1.3, 0.1, stamps)
    with pytest.raises(CheckFailed, match="must be a number"):
        check_decode_timing("timing", "1.0", 0.1, stamps)
    with pytest.raises(ValueError, match="at least two tokens"):
        check_decode_timing("timing", 1.0, 0.1, [0.0, 1.0])
