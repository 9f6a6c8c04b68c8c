"""Checks for notebook 01: token counts, cutting a reply out, streaming pieces."""

from __future__ import annotations

import numpy as np

from .core import CheckFailed, first_difference, flat_ints


def check_token_count(name: str, answer, text: str, tokenizer) -> None:
    """Compare a token count with tokenizer(text); say when characters or words were counted instead."""
    __tracebackhide__ = True  # noqa: F841
    expected = len(tokenizer(text).input_ids)
    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
        raise CheckFailed(f"{name}: expected a whole number, got {type(answer).__name__}: {answer!r}.")
    if answer != expected:
        why = {len(text): f"that is the number of characters; tokens are longer pieces, {expected} of them",
               len(text.split()): f"that is the number of words; the tokenizer makes {expected} tokens"}.get(
            int(answer), f"len(tokenizer(text).input_ids) is {expected}")
        raise CheckFailed(f"{name}: you have {answer}, expected {expected}: {why}.")
    print(f"✔ {name}")


def check_reply_cut(name: str, answer, output_ids, n_prompt_tokens: int, tokenizer) -> None:
    """Compare a reply with the ids after the prompt, decoded without special tokens; name the wrong cut."""
    __tracebackhide__ = True  # noqa: F841
    ids = flat_ints(output_ids)
    expected = tokenizer.decode(ids[n_prompt_tokens:], skip_special_tokens=True)
    if not isinstance(answer, str):
        raise CheckFailed(f"{name}: expected a string, got {type(answer).__name__}: decode the ids with tokenizer.decode.")
    if answer == expected:
        print(f"✔ {name}")
        return
    specials = [t for t in tokenizer.all_special_tokens if t in answer]
    if specials:
        why = f"your reply still holds {specials[0]!r}: decode with skip_special_tokens=True"
    elif answer and expected.endswith(answer):
        why = (f"the first {len(expected) - len(answer)} characters of the reply are missing, as when cutting the "
               "decoded text at the prompt's length: cut the ids at the prompt's token count instead")
    elif expected and answer.endswith(expected):
        why = f"your reply starts with {len(answer) - len(expected)} extra characters of the prompt: cut the ids later"
    elif not answer:
        why = ("your reply is empty: the cut is past the reply's start, as when cutting the decoded text at the "
               "prompt string's length; cut the ids at the prompt's token count instead")
    else:
        why = first_difference(answer, expected)
    raise CheckFailed(f"{name}: {why}.")


def check_stream_pieces(name: str, pieces, token_ids, tokenizer) -> None:
    """Streaming decode: one printed piece per token, none with a broken character, all adding up to the text."""
    __tracebackhide__ = True  # noqa: F841
    ids = flat_ints(token_ids)
    if not isinstance(pieces, (list, tuple)) or not all(isinstance(p, str) for p in pieces):
        raise CheckFailed(f"{name}: expected a list of strings (one per token), got {type(pieces).__name__}.")
    for i, piece in enumerate(pieces):
        if "\ufffd" in piece:
            raise CheckFailed(f"{name}: piece {i} is {piece!r}: it was printed before its character was complete. "
                              "Hold the text back while the decoded text so far ends with '\\ufffd'.")
    if len(pieces) != len(ids):
        raise CheckFailed(f"{name}: you have {len(pieces)} pieces for {len(ids)} tokens: give one piece per token, "
                          "'' while a character is still incomplete.")
    problem = first_difference("".join(pieces), tokenizer.decode(ids))
    if problem:
        raise CheckFailed(f"{name}: the pieces joined differ from tokenizer.decode(ids): {problem}.")
    print(f"✔ {name}")
