"""Checks for notebook 06: classifier-free guidance scores and the padded rows of a doubled batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .core import CheckFailed, first_difference


def check_cfg_scores(name: str, answer, cond_logits, uncond_logits, guidance_scale: float,
                     blend: float | None = None) -> None:
    """Compare CFG scores with uncond + g * (cond - uncond) on log-softmaxed branches (then the blend); name the slip."""
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
    problem = first_difference(answer.float(), right, atol=1e-4)
    if problem is None:
        print(f"✔ {name}")
        return
    g, log_softmax = guidance_scale, torch.log_softmax
    cond, uncond = log_softmax(cond_logits, -1), log_softmax(uncond_logits, -1)
    plain = g * (cond - uncond) + uncond
    mistakes = {
        "you mixed the raw logits: log-softmax each branch first (logits of two passes are not on one scale)":
            g * (cond_logits - uncond_logits) + uncond_logits,
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
        if tuple(answer.shape) == tuple(wrong.shape) and torch.allclose(answer.float(), wrong, atol=1e-4):
            raise CheckFailed(f"{name}: {hint}.")
    raise CheckFailed(f"{name}: {problem}.")


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
