"""Checks for notebook 09 (inside the forward pass): the layer-0 prediction, a repaired lens, a new head score."""

from __future__ import annotations

import torch

from .. import inside
from .core import CheckFailed, first_difference

CHOICES = ("same", "next", "other")


def check_layer0_prediction(prediction: str, lens_logits: torch.Tensor, input_ids) -> None:
    """prediction: what the lens's top token at layer 0 mostly is, 'same' (the input token), 'next' or 'other'."""
    __tracebackhide__ = True  # noqa: F841
    if prediction not in CHOICES:
        raise CheckFailed(f"exercise: prediction must be one of {CHOICES}, got {prediction!r}.")
    ids = torch.as_tensor(input_ids).flatten().to(lens_logits.device)
    if lens_logits.dim() != 3 or lens_logits.shape[1] != len(ids):
        raise ValueError(f"lens_logits of shape {tuple(lens_logits.shape)} do not fit {len(ids)} input ids. Fix: pass "
                         "the [layers + 1, positions, vocab] lens of these same input_ids.")
    top = lens_logits[0].argmax(-1)
    shares = {"same": float((top == ids).float().mean()),
              "next": float((top[:-1] == ids[1:]).float().mean()) if len(ids) > 1 else 0.0}
    shares["other"] = 1 - max(shares.values())
    measured = max(CHOICES, key=shares.get)
    if prediction != measured:
        raise CheckFailed(f"layer 0 prediction: you said {prediction!r}, but at layer 0 the top token is the input "
                          f"token itself at {shares['same']:.0%} of positions and the next token at "
                          f"{shares['next']:.0%}. Hint: layer 0 is the embedding alone, and lm_head is the "
                          "embedding matrix itself (tied): which row scores highest against a row of itself?")
    print(f"✔ layer 0 prediction: {measured!r} at {shares[measured]:.0%} of positions")


def check_lens(lens_logits: torch.Tensor, model, input_ids, *, atol: float = 1e-3) -> None:
    """The learner's logit lens [layers + 1, positions, vocab] against inside.logit_lens, naming the usual bugs."""
    __tracebackhide__ = True  # noqa: F841
    expected = inside.logit_lens(model, input_ids)
    problem = first_difference(torch.as_tensor(lens_logits).detach(), expected, atol=atol, rtol=1e-4)
    if problem is None:
        print("✔ logit lens")
        return
    hint = ""
    answer = torch.as_tensor(lens_logits).detach()
    if answer.shape == expected.shape:
        layers = (~torch.isclose(answer, expected, atol=atol, rtol=1e-4)).flatten(1).any(-1).nonzero().flatten()
        if layers.tolist() == [expected.shape[0] - 1]:
            hint = (" Only the last hidden state differs: transformers already applied the final norm to "
                    "hidden_states[-1], so it goes to lm_head without norming it again.")
        elif len(layers) >= expected.shape[0] - 1:
            hint = (" Nearly every layer differs: the final norm (model.model.norm) comes before lm_head at every "
                    "layer but the last.")
    raise CheckFailed(f"logit lens: {problem}.{hint}")


def check_duplicate_scores(scores: torch.Tensor, patterns: torch.Tensor, period: int) -> None:
    """Per-head duplicate-token scores [layers, heads] on a sequence repeated with the given period."""
    __tracebackhide__ = True  # noqa: F841
    reference = inside.head_scores(patterns, period)
    answer = torch.as_tensor(scores).detach()
    problem = first_difference(answer, reference["duplicate"], atol=1e-5)
    if problem is None:
        print("✔ duplicate-token scores")
        return
    hint = ""
    if first_difference(answer, reference["induction"], atol=1e-5) is None:
        hint = " These are the induction scores: the key is the earlier copy of the same token, q - period, not one after."
    elif answer.shape == reference["duplicate"].shape:
        hint = " Average over the queries of the second copy only (positions period to the end)."
    raise CheckFailed(f"duplicate-token scores: {problem}.{hint}")
