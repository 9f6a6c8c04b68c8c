"""The exercise checks name the first difference instead of a bare assert."""

import numpy as np
import pytest
import torch

from workshop_utils.checks import CheckFailed, check, check_token_ids, check_true, first_difference


@pytest.mark.parametrize(
    "answer, expected, message",
    [
        (torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4]), "at index 2: you have 3, expected 4"),
        (torch.zeros(2, 3), torch.zeros(2, 4), "shape is (2, 3), expected (2, 4)"),
        (torch.tensor([[0.0, 1.0], [2.0, 3.5]]), torch.tensor([[0.0, 1.0], [2.0, 3.0]]), "at index (1, 1): you have 3.5, expected 3"),
        (np.array([1.0, 5.0]), torch.tensor([1.0, 2.0]), "at index 1: you have 5, expected 2"),
        ("Hello world", "Hello World", "character 6 differs"),
        ("Hello", "Hello!", "length is 5, expected 6: you are missing '!'"),
        ([1, 2, [3, 4]], [1, 2, [3, 5]], "item 2: item 1: you have 4, expected 5"),
        ([1, 2], [1, 2, 3], "length is 2, expected 3"),
        ({"a": 1}, {"a": 1, "b": 2}, "key 'b' is missing"),
        ({"a": 1, "b": 3}, {"a": 1, "b": 2}, "['b'] you have 3, expected 2"),
        (12, 9, "you have 12, expected 9"),
        ("12", 12, "expected a number, got str"),
        (0.5, 0.25, "you have 0.5, expected 0.25"),
        (None, True, "you have None, expected True"),
    ],
)
def test_first_difference_names_it(answer, expected, message):
    assert message in first_difference(answer, expected)


@pytest.mark.parametrize(
    "answer, expected, tolerance",
    [(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]), 1e-6), ("abc", "abc", 0), ([1, (2, 3)], [1, (2, 3)], 0),
     (0.1 + 0.2, 0.3, 1e-12), (torch.tensor(5), 5, 0), ({"x": [1]}, {"x": [1]}, 0)],
)
def test_equal_answers_pass(answer, expected, tolerance):
    assert first_difference(answer, expected, atol=tolerance) is None


def test_tolerance_is_respected():
    answer, expected = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.05, 2.1, 3.0])
    assert first_difference(answer, expected, atol=0.01) == "at index 0: you have 1, expected 1.05 (2 of 3 entries differ)"
    assert first_difference(answer, expected, atol=0.06) == "at index 1: you have 2, expected 2.1"
    assert first_difference(answer, expected, atol=0.2) is None


def test_check_prints_a_tick_or_raises_with_hint(capsys):
    check("sum", 3, 3)
    assert capsys.readouterr().out == "✔ sum\n"
    with pytest.raises(CheckFailed, match=r"^sum: you have 4, expected 3\. Hint: add them up$"):
        check("sum", 4, 3, hint="add them up")
    assert isinstance(CheckFailed("x"), AssertionError), "nbgrader counts AssertionErrors as failures"


def test_check_true():
    check_true("positive", True, "unused")
    with pytest.raises(CheckFailed, match="positive: -1 is not above 0"):
        check_true("positive", False, "-1 is not above 0")


def test_check_token_ids_names_the_tokens(tokenizer):
    expected = tokenizer("Hello world").input_ids
    check_token_ids("ids", expected, expected, tokenizer)
    other = tokenizer("Hello there").input_ids
    with pytest.raises(CheckFailed, match=r"position 1 differs: you have \d+ 'Ġthere', expected \d+ 'Ġworld'"):
        check_token_ids("ids", other, expected, tokenizer)
    with pytest.raises(CheckFailed, match="you have 1 tokens, expected 2"):
        check_token_ids("ids", expected[:1], expected, tokenizer)
