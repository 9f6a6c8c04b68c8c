"""Checks for notebook 05: replies cut out of a conversation, assistant-only labels, the shifted loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..chat import IGNORE_INDEX
from .core import CheckFailed, first_difference, flat_ints


def check_replies(name: str, answer: Sequence[str], expected: Sequence[str], eos_token: str = "<|im_end|>") -> None:
    """Compare replies cut out of generate's output; say whether a cut went too early or too late."""
    __tracebackhide__ = True  # noqa: F841
    if isinstance(answer, str) or len(answer) != len(expected):
        have = "a single string" if isinstance(answer, str) else f"{len(answer)} replies"
        raise CheckFailed(f"{name}: you have {have}, expected a list of {len(expected)} replies, one per row.")
    for i, (a, e) in enumerate(zip(answer, expected)):
        if a == e:
            continue
        if not isinstance(a, str):
            raise CheckFailed(f"{name}: reply {i} is a {type(a).__name__}, expected a string: decode the ids.")
        if a.startswith(e) and eos_token in a:
            raise CheckFailed(f"{name}: reply {i} goes on past its end of turn ({a[len(e):len(e) + 30]!r}): stop at "
                              f"the first {eos_token}; what follows is padding of the batch.")
        if a.endswith(e) and a != e:
            raise CheckFailed(f"{name}: reply {i} starts with part of the prompt ({a[:len(a) - len(e)][-30:]!r}): "
                              "slice at the prompt's width, input_ids.shape[1], the same for every row.")
        if e.endswith(a) or e.startswith(a):
            raise CheckFailed(f"{name}: reply {i} is {a!r}, only part of {e!r}: your cut went too far.")
        raise CheckFailed(f"{name}: reply {i}: {first_difference(a, e)}.")
    print(f"✔ {name}")


def check_labels(name: str, answer, expected, tokenizer) -> None:
    """Compare loss labels for a conversation; name the first wrong position, its token and what belongs there."""
    __tracebackhide__ = True  # noqa: F841
    a = flat_ints(answer)
    e = flat_ints(expected)
    if len(a) != len(e):
        raise CheckFailed(f"{name}: you have {len(a)} labels, expected {len(e)}: one label per input id.")
    for i, (x, y) in enumerate(zip(a, e)):
        if x == y:
            continue
        if y == IGNORE_INDEX:
            token = tokenizer.convert_ids_to_tokens(x) if x >= 0 else "?"
            raise CheckFailed(f"{name}: position {i}: you have {x} ({token!r}), expected -100: this token is not "
                              "the assistant's (prompt, header or template text), so the loss must skip it.")
        token = tokenizer.convert_ids_to_tokens(y)
        why = "the end of the assistant's turn, which the model must learn to write" if y == tokenizer.eos_token_id \
            else "part of the assistant's reply"
        raise CheckFailed(f"{name}: position {i}: you have {x}, expected {y} ({token!r}): it is {why}; "
                          "keep its token id.")
    print(f"✔ {name}")


def check_shifted_loss(name: str, answer, logits, labels) -> None:
    """Compare a hand-computed causal LM loss with the right one; recognise the usual mistakes."""
    __tracebackhide__ = True  # noqa: F841
    logits = torch.as_tensor(logits).detach().double()
    logits = logits[None] if logits.dim() == 2 else logits  # [positions, vocab] or [1, positions, vocab]
    labels = torch.as_tensor(labels).reshape(logits.shape[:2])
    ce = torch.nn.functional.cross_entropy
    vocab = logits.shape[-1]
    right = ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    if not isinstance(answer, (int, float, np.number)) and not (isinstance(answer, torch.Tensor) and answer.numel() == 1):
        raise CheckFailed(f"{name}: expected a number (a float or a one-element tensor), got {type(answer).__name__}.")
    value = float(answer)
    if math.isclose(value, float(right), abs_tol=1e-4):
        print(f"✔ {name}")
        return
    mistakes = {
        "you did not shift: position t predicts token t + 1, so compare logits[:, :-1] with labels[:, 1:]":
            ce(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX),
        "you summed instead of averaging over the learned positions":
            ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
               reduction="sum"),
        "you averaged over every position, masked ones included: skip the -100 labels (ignore_index=-100)":
            ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
               reduction="sum")
            / labels[:, 1:].numel(),
    }
    for hint, wrong in mistakes.items():
        if math.isclose(value, float(wrong), abs_tol=1e-4):
            raise CheckFailed(f"{name}: you have {value:.4f}, expected {float(right):.4f}: {hint}.")
    raise CheckFailed(f"{name}: you have {value:.4f}, expected {float(right):.4f}: the mean cross-entropy of "
                      "logits[:, :-1] against labels[:, 1:] over the positions whose label is not -100.")
