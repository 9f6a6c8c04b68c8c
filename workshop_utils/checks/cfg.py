"""Checks for notebook 06: classifier-free guidance scores and the padded rows of a doubled batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .core import CheckFailed, first_difference


def _less_a_row_constant(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """scores less one constant per row: the median of their difference from the reference (finite entries only).

    The median, so that a single wrong entry is reported where it is rather than spread over the row.
    """
    both = torch.isfinite(scores) & torch.isfinite(reference)
    difference = torch.where(both, scores - reference, torch.full_like(scores, float("nan")))
    shift = torch.nan_to_num(difference.nanmedian(dim=-1, keepdim=True).values)
    return scores - shift


def check_cfg_scores(name: str, answer, cond_logits, uncond_logits, guidance_scale: float,
                     blend: float | None = None) -> None:
    """Compare CFG scores with uncond + g * (cond - uncond) on log-softmaxed branches (then the blend); name the slip.

    Scores that differ from those by one constant per row are accepted: a softmax removes the constant, so they
    give the same probabilities, the same greedy token and the same samples (for example a second log-softmax
    after guiding, or raw logits in place of log-probabilities).
    """
    __tracebackhide__ = True  # noqa: F841
    from ..cfg import guide

    cond_logits, uncond_logits = torch.as_tensor(cond_logits).float(), torch.as_tensor(uncond_logits).float()
    if cond_logits.shape != uncond_logits.shape or cond_logits.numel() == 0:
        raise ValueError(f"{name}: cond_logits {tuple(cond_logits.shape)} and uncond_logits "
                         f"{tuple(uncond_logits.shape)} must be non-empty and of one shape. Fix: pass both branches' "
                         "logits at the same step, outputs.logits[:, -1] of each.")
    right = guide(cond_logits, uncond_logits, guidance_scale, blend)
    if not isinstance(answer, torch.Tensor):
        raise CheckFailed(f"{name}: expected a tensor of scores, got {type(answer).__name__}.")
    if tuple(answer.shape) != tuple(right.shape):
        raise CheckFailed(f"{name}: the scores have shape {tuple(answer.shape)}, expected {tuple(right.shape)}: "
                          "one row of vocabulary scores per row of logits.")
    answer = answer.float()
    if first_difference(answer, right, atol=1e-4) is None:
        print(f"✔ {name}")
        return
    shifted = _less_a_row_constant(answer, right)
    if first_difference(shifted, right, atol=1e-4) is None:
        print(f"✔ {name} (equal up to one constant per row, so the same probabilities after a softmax)")
        return
    g, log_softmax = guidance_scale, torch.log_softmax
    cond, uncond = log_softmax(cond_logits, -1), log_softmax(uncond_logits, -1)
    plain = g * (cond - uncond) + uncond
    mistakes = {
        "the branches are swapped: start from the unconditional scores and step towards the conditional ones, "
        "uncond + g * (cond - uncond)": cond + g * (uncond - cond),
        "you scaled the conditional scores alone: it is uncond + g * (cond - uncond), not g * cond": g * cond,
    }
    if blend is not None:
        mistakes["the blend is the wrong way round: blend * cfg + (1 - blend) * cond"] = \
            (1 - blend) * plain + blend * cond
        mistakes["you blended with the unconditional scores: blend * cfg + (1 - blend) * cond"] = \
            blend * plain + (1 - blend) * uncond
        mistakes["you forgot the blend"] = plain
    for hint, wrong in mistakes.items():
        if first_difference(_less_a_row_constant(answer, wrong), wrong, atol=1e-4) is None:
            raise CheckFailed(f"{name}: {hint}.")
    raise CheckFailed(f"{name}: {first_difference(shifted, right, atol=1e-4)} (after removing one constant per "
                      "row, which a softmax ignores).")


def check_padded_rows(name: str, input_ids, attention_mask, position_ids, rows: Sequence[Sequence[int]],
                      pad_token_id: int) -> None:
    """Compare a left-padded batch, its attention mask and its position ids with the right ones for these rows."""
    __tracebackhide__ = True  # noqa: F841
    if not rows or not all(len(r) for r in rows):
        raise ValueError(f"{name}: rows is {rows!r}; the check needs at least one row, each of one token or more. "
                         "Fix: pass the token ids of each branch, for example [prompt_ids, negative_ids].")
    width = max(len(r) for r in rows)
    ids = [[pad_token_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    positions = [[0] * (width - len(r)) + list(range(len(r))) for r in rows]
    given = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    for what, tensor in given.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (len(rows), width):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckFailed(f"{name}: {what} is {shape}, expected a tensor of shape {(len(rows), width)}: "
                              "one row per branch, as wide as the longest.")
    right_padded = [list(r) + [pad_token_id] * (width - len(r)) for r in rows]
    if input_ids.tolist() == right_padded and right_padded != ids:
        raise CheckFailed(f"{name}: you padded on the right; pad on the left, so that every row's last token "
                          "(the one whose logits give the next token) sits in the last column.")
    for what, tensor, expected, why in (
            ("input_ids", input_ids, ids, "the padding goes before each row's tokens"),
            ("attention_mask", attention_mask, mask, "0 over the padding, 1 over real tokens"),
            ("position_ids", position_ids, positions,
             "count positions from each row's first real token: attention_mask.cumsum(-1) - 1, 0 on the padding")):
        for r, (have, want) in enumerate(zip(tensor.tolist(), expected)):
            if have != want:
                col = next(c for c, (x, y) in enumerate(zip(have, want)) if x != y)
                raise CheckFailed(f"{name}: {what}[{r}, {col}] is {have[col]}, expected {want[col]}: {why}.")
    print(f"✔ {name}")


def check_negative_prompt(name: str, model, prompt_ids, negative_prompt_ids, word_ids: Sequence[int],
                          guidance_scale: float, *, at_most: float = 0.5) -> None:
    """Does the negative prompt itself steer away from the words? Compare with the default branch at the same g.

    At the same guidance scale, the next-token probability of the words with the negative prompt as the
    unconditional branch must be at most `at_most` times the one with the prompt's last token as that branch.
    (Comparing with g = 1 would credit the negative prompt with what guidance alone does.)
    """
    __tracebackhide__ = True  # noqa: F841
    from ..cfg import guide
    from ..tokens import token_id_rows

    prompt = token_id_rows(prompt_ids, "prompt_ids", one_row=True).to(model.device)
    negative = token_id_rows(negative_prompt_ids, "negative_prompt_ids", one_row=True).to(model.device)
    words = torch.as_tensor(list(word_ids), dtype=torch.long)
    with torch.no_grad():
        cond, last, neg = (model(ids).logits[:, -1].float() for ids in (prompt, prompt[:, -1:], negative))
    p_last, p_negative = (torch.softmax(guide(cond, uncond, guidance_scale), -1)[0, words].sum().item()
                          for uncond in (last, neg))
    ratio = p_negative / p_last if p_last > 0 else float("inf")
    said = (f"at g = {guidance_scale}, p(words) is {p_negative:.3f} with the negative prompt against {p_last:.3f} "
            f"with the last token alone ({ratio:.2f}x)")
    if ratio <= at_most:
        print(f"✔ {name}: {said}")
        return
    raise CheckFailed(f"{name}: {said}, not below {at_most}x: the negative prompt does no more than guidance alone. "
                      "Fix: a negative prompt after which the model would say these words.")
