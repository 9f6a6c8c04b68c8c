"""Checks for notebook 07: labels and ids after the image splice."""

from __future__ import annotations


from ..chat import IGNORE_INDEX
from .core import CheckFailed, flat_ints


def check_spliced_labels(name: str, answer, expected) -> None:
    """Compare labels after the image splice; name the first wrong position and what belongs there."""
    __tracebackhide__ = True  # noqa: F841
    a = flat_ints(answer)
    e = flat_ints(expected)
    if len(a) != len(e):
        raise CheckFailed(
            f"{name}: you have {len(a)} labels, expected {len(e)}: one label per position of the spliced "
            "sequence, where the image placeholder became one position per patch."
        )
    for i, (x, y) in enumerate(zip(a, e)):
        if x != y:
            why = ("an image or prompt position: it must be -100" if y == IGNORE_INDEX
                   else f"an answer token: keep its id {y}")
            raise CheckFailed(f"{name}: position {i}: you have {x}, expected {y} ({why}).")
    print(f"✔ {name}")


def check_expanded_ids(name: str, answer, expected, image_token_id: int) -> None:
    """Compare LLaVA-style input ids (one placeholder per image feature) and say what is off."""
    __tracebackhide__ = True  # noqa: F841
    a = flat_ints(answer)
    e = flat_ints(expected)
    have, need = a.count(image_token_id), e.count(image_token_id)
    if have != need:
        raise CheckFailed(
            f"{name}: you have {have} image placeholders, expected {need}: LLaVA repeats the placeholder "
            "once per image feature vector (patch), and masked_scatter fills them in order."
        )
    for i, (x, y) in enumerate(zip(a, e)):
        if x != y:
            raise CheckFailed(f"{name}: position {i}: you have id {x}, expected {y}; the text around the "
                              "placeholders must stay as it was, in order.")
    if len(a) != len(e):
        raise CheckFailed(f"{name}: you have {len(a)} ids, expected {len(e)}.")
    print(f"✔ {name}")


def check_derangement(name: str, order, n: int) -> None:
    """A shuffle for the baseline: a permutation of range(n) where no question keeps its own image."""
    __tracebackhide__ = True  # noqa: F841
    a = flat_ints(order)
    if sorted(a) != list(range(n)):
        missing = sorted(set(range(n)) - set(a))
        raise CheckFailed(f"{name}: not a permutation of 0..{n - 1}: image(s) {missing[:5]} never shown, so some "
                          "other image is shown twice. Move images, do not draw them with replacement.")
    for i, j in enumerate(a):
        if i == j:
            raise CheckFailed(f"{name}: question {i} is shown its own image {j}: that row measures the real "
                              "image, not the shuffled baseline. No question may keep its own image.")
    print(f"✔ {name}")
