"""Checks for notebook 03: sampling filters, how many tokens top-p keeps, seeded sampling."""

from __future__ import annotations

import numpy as np
import torch

from .core import CheckFailed


def _filter_test_logits() -> torch.Tensor:
    """Rows a filter must handle: spread-out scores, many ties, one near-certain token, removed (-inf) tokens."""
    g = torch.Generator().manual_seed(3)
    spread = torch.randn(3, 200, generator=g) * 3
    ties = torch.randint(-3, 3, (2, 200), generator=g).float()
    certain = torch.full((1, 200), -10.0)
    certain[0, 17] = 15.0
    rows = torch.cat([spread, ties, certain])
    rows[0, :20] = float("-inf")
    return rows


def check_filter(name: str, answer_fn, reference_fn, setting: str) -> None:
    """Run a learner's logits filter and a reference on test rows; name the first row that keeps other tokens."""
    __tracebackhide__ = True  # noqa: F841
    logits = _filter_test_logits()
    expected = reference_fn(logits.clone())
    try:
        answer = answer_fn(logits.clone())
    except Exception as error:  # the learner's code: say which input broke it
        raise CheckFailed(f"{name}: your filter raised {type(error).__name__}: {error} on logits of shape "
                          f"{tuple(logits.shape)} (one row per example, the vocabulary on the last axis).") from error
    answer = torch.as_tensor(answer)
    if tuple(answer.shape) != tuple(logits.shape):
        raise CheckFailed(f"{name}: you returned shape {tuple(answer.shape)}, expected {tuple(logits.shape)}: "
                          "return the logits with the removed tokens set to -inf, same shape.")
    if answer.is_floating_point() and torch.allclose(answer.nan_to_num(0).sum(-1), torch.ones(len(answer)), atol=1e-4):
        raise CheckFailed(f"{name}: you returned probabilities (each row sums to 1); return logits with the removed "
                          "tokens set to -inf, and leave the softmax to the sampler.")
    for row in range(len(logits)):
        have, want = torch.isfinite(answer[row]), torch.isfinite(expected[row])
        if not torch.equal(have, want):
            extra = (have & ~want).nonzero().flatten().tolist()
            missing = (want & ~have).nonzero().flatten().tolist()
            detail = (f"token {extra[0]} should be removed" if extra else f"token {missing[0]} should be kept")
            raise CheckFailed(f"{name}: row {row}: you kept {int(have.sum())} tokens, {setting} keeps "
                              f"{int(want.sum())} ({detail}).")
        if not torch.equal(answer[row][want], expected[row][want]):
            raise CheckFailed(f"{name}: row {row}: the kept tokens' logits changed; a filter only sets the removed "
                              "tokens to -inf and leaves the others as they are.")
    print(f"✔ {name}")


def check_kept_count(name: str, answer, logits, temperature: float, top_p: float) -> None:
    """How many tokens top-p keeps at a temperature; say which step was skipped or done in the wrong order."""
    __tracebackhide__ = True  # noqa: F841
    from ..generation import apply_temperature, top_p_filter

    logits = torch.as_tensor(logits).float().flatten()

    def kept(scores) -> int:
        return int(torch.isfinite(top_p_filter(scores, top_p)).sum())

    expected = kept(apply_temperature(logits, temperature))
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
        raise CheckFailed(f"{name}: expected a whole number of tokens, got {type(answer).__name__}: {answer!r}.")
    if answer == expected:
        print(f"✔ {name}")
        return
    probs = apply_temperature(logits, temperature).softmax(-1).sort(descending=True).values
    below = int((probs.cumsum(-1) < top_p).sum())  # tokens strictly before the mass reaches top_p
    if answer == kept(logits):
        why = f"that is the count at temperature 1: divide the logits by {temperature} before top-p"
    elif answer == below:
        why = ("you stopped one token early: top-p keeps the token that carries the total past p too, so that "
               "the kept probability is at least p")
    elif answer == logits.numel():
        why = "that is the whole vocabulary: count only the tokens whose logit is still finite after the filter"
    else:
        why = "apply the temperature, then keep the likeliest tokens until their probability adds up to top_p"
    raise CheckFailed(f"{name}: you have {answer}, expected {expected}: {why}.")


def check_reproduces_sampling(name: str, answer, model, input_ids, *, seed: int, temperature: float,
                              max_new_tokens: int, tokenizer) -> None:
    """Does answer (from generate) equal our seeded sampling with every token allowed? Spot the top_k=50 default."""
    __tracebackhide__ = True  # noqa: F841
    from ..generation import sample_generate

    expected = sample_generate(model, input_ids, max_new_tokens, temperature=temperature, seed=seed)
    a = torch.as_tensor(answer).to(expected.device)
    if a.shape == expected.shape and torch.equal(a, expected):
        print(f"✔ {name}")
        return
    with_50 = sample_generate(model, input_ids, max_new_tokens, temperature=temperature, top_k=50, seed=seed)
    if a.shape == with_50.shape and torch.equal(a, with_50):
        raise CheckFailed(f"{name}: your call sampled from the 50 likeliest tokens only: generate fell back to "
                          "generation_config's default top_k=50. Pass top_k=0 to turn it off.")
    unseeded = a.shape == expected.shape and torch.equal(a[:, :input_ids.shape[-1]], expected[:, :input_ids.shape[-1]])
    hint = (f" Call torch.manual_seed({seed}) right before generate, with do_sample=True and "
            f"temperature={temperature}." if unseeded else "")
    a_list, e_list = [int(t) for t in a.flatten()], [int(t) for t in expected.flatten()]
    for i, (x, y) in enumerate(zip(a_list, e_list)):
        if x != y:
            raise CheckFailed(f"{name}: position {i} differs: you have {x} {tokenizer.convert_ids_to_tokens(x)!r}, "
                              f"expected {y} {tokenizer.convert_ids_to_tokens(y)!r}.{hint}")
    raise CheckFailed(f"{name}: you have {len(a_list)} tokens, expected {len(e_list)}: ask for "
                      f"max_new_tokens={max_new_tokens}.{hint}")
