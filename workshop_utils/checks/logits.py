"""Checks for notebook 02: which position predicts what, and decode timing from timestamps."""

from __future__ import annotations

import math

import numpy as np
import torch

from .core import CheckFailed, flat_ints


def check_first_correct_position(name: str, answer, logits, input_ids, tokenizer) -> None:
    """The first position whose top-1 prediction is the token that really came next (position p predicts p + 1)."""
    __tracebackhide__ = True  # noqa: F841
    ids = flat_ints(input_ids)
    logits = torch.as_tensor(logits)
    if logits.dim() < 2 or logits.reshape(-1, logits.shape[-1]).shape[0] != len(ids) or not ids:
        raise ValueError(f"{name}: logits of shape {tuple(logits.shape)} do not match {len(ids)} input ids (one row of "
                         "logits per position). Fix: pass model(input_ids).logits with the same input_ids.")
    top1 = [int(t) for t in logits.reshape(-1, logits.shape[-1]).argmax(-1)]
    right = [p for p in range(len(ids) - 1) if top1[p] == ids[p + 1]]
    expected = right[0] if right else None
    if answer == expected:
        print(f"✔ {name}")
        return
    if expected is None:
        raise CheckFailed(f"{name}: no position's top-1 is the next token here, so the answer is None.")
    if not isinstance(answer, (int, np.integer)) or isinstance(answer, bool) or not 0 <= answer < len(ids):
        raise CheckFailed(f"{name}: expected a position from 0 to {len(ids) - 1}, got {answer!r}.")

    def token(i: int) -> str:
        return repr(tokenizer.convert_ids_to_tokens(i))

    if answer == expected + 1:
        why = (f"position {answer} holds the token that was predicted; the prediction sits one position earlier, "
               f"at {expected}")
    elif top1[answer] == ids[answer]:
        why = (f"at position {answer} the top-1 {token(top1[answer])} equals the input token at {answer} itself; "
               f"the logits at p predict token p + 1")
    elif answer > expected:
        why = (f"position {expected} comes first: its top-1 {token(top1[expected])} is the token that came next")
    else:
        why = (f"at position {answer} the top-1 is {token(top1[answer])} but the next token is {token(ids[answer + 1])}")
    raise CheckFailed(f"{name}: you have {answer}, expected {expected}: {why}.")


def check_decode_timing(name: str, ttft, seconds_per_token, timestamps) -> None:
    """Time to first token and time per later token from timestamps [start, first token, second token, ...]."""
    __tracebackhide__ = True  # noqa: F841
    t = [float(x) for x in timestamps]
    if len(t) < 3:
        raise ValueError(f"timestamps needs a start and at least two tokens, got {len(t)} values. Fix: pass "
                         "the start time, then one perf_counter() reading after each new token.")
    expected_ttft, expected_per_token = t[1] - t[0], (t[-1] - t[1]) / (len(t) - 2)
    for label, value in (("ttft", ttft), ("seconds_per_token", seconds_per_token)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise CheckFailed(f"{name}: {label} must be a number of seconds, got {type(value).__name__}.")
    if not math.isclose(ttft, expected_ttft, rel_tol=1e-6):
        why = ("that is the time of the whole run; the first token arrives at timestamps[1]"
               if math.isclose(ttft, t[-1] - t[0], rel_tol=1e-6) else "it is timestamps[1] - timestamps[0]")
        raise CheckFailed(f"{name}: ttft is {ttft:.4f} s, expected {expected_ttft:.4f} s: {why}.")
    if not math.isclose(seconds_per_token, expected_per_token, rel_tol=1e-6):
        if math.isclose(seconds_per_token, (t[-1] - t[0]) / (len(t) - 1), rel_tol=1e-6):
            why = "you averaged over every gap, the prefill included: start the average at the first token"
        elif math.isclose(seconds_per_token, (t[-1] - t[1]) / (len(t) - 1), rel_tol=1e-6):
            why = f"{len(t) - 2} tokens came after the first one, so divide by {len(t) - 2}"
        else:
            why = "average the gaps between tokens after the first one"
        raise CheckFailed(f"{name}: seconds_per_token is {seconds_per_token:.4f} s, expected "
                          f"{expected_per_token:.4f} s: {why}.")
    print(f"✔ {name}")
