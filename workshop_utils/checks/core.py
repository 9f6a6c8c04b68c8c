"""The shared part of every check: CheckFailed, the first difference between two answers, and the tick.

Every check prints one line starting with a tick when the answer is right, and raises
CheckFailed (an AssertionError, so nbgrader counts it) with a message that says exactly
what differs when it is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


class CheckFailed(AssertionError):
    """The learner's answer differs from the reference; the message says where and how."""


def flat_ints(values) -> list[int]:
    """Ids or labels in any form (list, tensor, one row or several) as one flat list of Python ints."""
    return [int(t) for t in torch.as_tensor(values).flatten()]


def _snippet(text: str, at: int, radius: int = 12) -> str:
    start = max(at - radius, 0)
    return repr(text[start:at]) + " ▶ " + repr(text[at:at + radius])


def _describe_tensor(answer, expected, atol: float, rtol: float) -> str | None:
    a = torch.as_tensor(answer)
    e = torch.as_tensor(expected)
    if tuple(a.shape) != tuple(e.shape):
        return f"shape is {tuple(a.shape)}, expected {tuple(e.shape)}"
    if a.numel() == 0:
        return None
    if a.is_floating_point() or e.is_floating_point():
        a, e = a.double(), e.double()
        bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    else:
        bad = a != e
    if not bad.any():
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    where = f"at index {index}" if len(index) > 1 else f"at index {index[0]}" if index else "the value"
    count = int(bad.sum())
    extra = f" ({count} of {bad.numel()} entries differ)" if count > 1 else ""
    return f"{where}: you have {a[index].item():g}, expected {e[index].item():g}{extra}"


def first_difference(answer: Any, expected: Any, *, atol: float = 0.0, rtol: float = 0.0) -> str | None:
    """Describe the first place where answer differs from expected, or return None if they agree."""
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        if not isinstance(answer, (torch.Tensor, np.ndarray, list, tuple, int, float)):
            return f"expected a tensor, got {type(answer).__name__}"
        return _describe_tensor(answer, expected, atol, rtol)
    if isinstance(expected, str):
        if not isinstance(answer, str):
            return f"expected a string, got {type(answer).__name__}: {answer!r}"
        for i, (x, y) in enumerate(zip(answer, expected)):
            if x != y:
                return f"character {i} differs: you have {_snippet(answer, i)}, expected {_snippet(expected, i)}"
        if len(answer) != len(expected):
            n = min(len(answer), len(expected))
            longer, what = (answer, "you have extra") if len(answer) > n else (expected, "you are missing")
            return f"length is {len(answer)}, expected {len(expected)}: {what} {longer[n:n + 30]!r} at the end"
        return None
    if isinstance(expected, bool) or expected is None:
        return None if answer is expected or answer == expected else f"you have {answer!r}, expected {expected!r}"
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if not isinstance(answer, (int, float, np.number)) and not (
            isinstance(answer, torch.Tensor) and answer.numel() == 1
        ):
            return f"expected a number, got {type(answer).__name__}: {answer!r}"
        value = float(answer)
        if isinstance(expected, int) and atol == 0 and rtol == 0:
            return None if value == expected else f"you have {answer!r}, expected {expected!r}"
        if math.isclose(value, expected, abs_tol=atol, rel_tol=rtol):
            return None
        return f"you have {value:g}, expected {expected:g} (tolerance {max(atol, rtol * abs(expected)):g})"
    if isinstance(expected, Mapping):
        if not isinstance(answer, Mapping):
            return f"expected a dict, got {type(answer).__name__}"
        missing = [k for k in expected if k not in answer]
        if missing:
            return f"key {missing[0]!r} is missing"
        extra = [k for k in answer if k not in expected]
        if extra:
            return f"unexpected key {extra[0]!r}"
        for key in expected:
            inner = first_difference(answer[key], expected[key], atol=atol, rtol=rtol)
            if inner:
                return f"[{key!r}] {inner}"
        return None
    if isinstance(expected, Sequence):
        if not isinstance(answer, (Sequence, torch.Tensor, np.ndarray)) or isinstance(answer, str):
            return f"expected a sequence, got {type(answer).__name__}"
        for i, (x, y) in enumerate(zip(answer, expected)):
            inner = first_difference(x, y, atol=atol, rtol=rtol)
            if inner:
                return f"item {i}: {inner}"
        if len(answer) != len(expected):
            return f"length is {len(answer)}, expected {len(expected)}"
        return None
    return None if answer == expected else f"you have {answer!r}, expected {expected!r}"


def check(name: str, answer: Any, expected: Any, *, atol: float = 0.0, rtol: float = 0.0, hint: str = "") -> None:
    """Print a tick if answer equals expected; otherwise raise CheckFailed naming the first difference."""
    __tracebackhide__ = True  # noqa: F841 (IPython and pytest hide this frame)
    problem = first_difference(answer, expected, atol=atol, rtol=rtol)
    if problem:
        raise CheckFailed(f"{name}: {problem}." + (f" Hint: {hint}" if hint else ""))
    print(f"✔ {name}")


def check_true(name: str, condition: bool, explanation: str) -> None:
    """Print a tick if condition holds; otherwise raise CheckFailed with the explanation."""
    __tracebackhide__ = True  # noqa: F841
    if not condition:
        raise CheckFailed(f"{name}: {explanation}")
    print(f"✔ {name}")


def check_token_ids(name: str, answer, expected, tokenizer) -> None:
    """Compare two token-id sequences and name the first differing position with both tokens."""
    __tracebackhide__ = True  # noqa: F841
    a = flat_ints(answer)
    e = flat_ints(expected)
    for i, (x, y) in enumerate(zip(a, e)):
        if x != y:
            raise CheckFailed(
                f"{name}: position {i} differs: you have {x} {tokenizer.convert_ids_to_tokens(x)!r}, "
                f"expected {y} {tokenizer.convert_ids_to_tokens(y)!r}."
            )
    if len(a) != len(e):
        raise CheckFailed(f"{name}: you have {len(a)} tokens, expected {len(e)}.")
    print(f"✔ {name}")
