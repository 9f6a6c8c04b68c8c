"""Exercise checks: compare a learner's answer with the reference and explain the first difference.

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
    a = [int(t) for t in torch.as_tensor(answer).flatten()]
    e = [int(t) for t in torch.as_tensor(expected).flatten()]
    for i, (x, y) in enumerate(zip(a, e)):
        if x != y:
            raise CheckFailed(
                f"{name}: position {i} differs: you have {x} {tokenizer.convert_ids_to_tokens(x)!r}, "
                f"expected {y} {tokenizer.convert_ids_to_tokens(y)!r}."
            )
    if len(a) != len(e):
        raise CheckFailed(f"{name}: you have {len(a)} tokens, expected {len(e)}.")
    print(f"✔ {name}")


# --- notebooks 01 and 02 ---

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
    ids = [int(t) for t in torch.as_tensor(output_ids).flatten()]
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
    ids = [int(t) for t in torch.as_tensor(token_ids).flatten()]
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


def check_first_correct_position(name: str, answer, logits, input_ids, tokenizer) -> None:
    """The first position whose top-1 prediction is the token that really came next (position p predicts p + 1)."""
    __tracebackhide__ = True  # noqa: F841
    ids = [int(t) for t in torch.as_tensor(input_ids).flatten()]
    top1 = [int(t) for t in torch.as_tensor(logits).reshape(-1, torch.as_tensor(logits).shape[-1]).argmax(-1)]
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
        raise ValueError(f"timestamps needs a start and at least two tokens, got {len(t)} values.")
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


# --- notebook 03 ---

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
    from .generation import apply_temperature, top_p_filter

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
    from .generation import sample_generate

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


# --- notebook 04 ---

def check_positions_fed(name: str, without_cache, with_cache, prompt_tokens: int, new_tokens: int) -> None:
    """Positions fed to the model to write new_tokens tokens: re-feeding everything against reading the cache."""
    __tracebackhide__ = True  # noqa: F841
    p, n = prompt_tokens, new_tokens
    expected_without = n * p + n * (n - 1) // 2  # step i feeds the prompt and the i tokens written so far
    expected_with = p + n - 1  # the prompt once, then one position per later step
    for label, value in (("without_cache", without_cache), ("with_cache", with_cache)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CheckFailed(f"{name}: {label} must be a whole number of positions, got {type(value).__name__}: "
                              f"{value!r}.")
    if without_cache != expected_without:
        why = {n * (p + n): "you counted the last new token as fed, but it is only chosen, never fed back: step i "
                            f"feeds {p} + i positions, for i = 0 to {n - 1}",
               n * p + n * (n + 1) // 2: f"one token too many per step: the first step feeds the {p} prompt tokens "
                                         "alone",
               n * p: "the sequence grows: step i feeds the prompt and the i tokens already written",
               p + n: "that is the final length; without the cache every step feeds the whole sequence so far"}.get(
            int(without_cache), f"add up {p} + i over the steps i = 0 to {n - 1}")
        raise CheckFailed(f"{name}: without_cache is {without_cache}, expected {expected_without}: {why}.")
    if with_cache != expected_with:
        why = {p + n: "the last new token is chosen but never fed back",
               n: f"the first step feeds the whole prompt ({p} positions), then one position per step",
               expected_without: "with the cache each step after the first feeds one position only"}.get(
            int(with_cache), f"the prompt once ({p}), then one position for each of the {n - 1} later steps")
        raise CheckFailed(f"{name}: with_cache is {with_cache}, expected {expected_with}: {why}.")
    print(f"✔ {name}")


def check_cache_mib(name: str, answer, config, positions: int, *, batch_size: int = 1,
                    dtype: torch.dtype = torch.float32) -> None:
    """A KV cache's size in MiB from a config; recognise a missing factor (keys and values, kv-heads, batch, bytes)."""
    __tracebackhide__ = True  # noqa: F841
    from .kv_cache import head_dim, kv_cache_bytes, kv_heads

    if isinstance(answer, bool) or not isinstance(answer, (int, float, np.number)):
        raise CheckFailed(f"{name}: expected a number of MiB, got {type(answer).__name__}: {answer!r}.")
    mib = 2 ** 20
    right = kv_cache_bytes(config, positions, batch_size=batch_size, dtype=dtype)
    value = float(answer)
    if math.isclose(value, right / mib, rel_tol=1e-6):
        print(f"✔ {name}")
        return
    element = torch.empty((), dtype=dtype).element_size()
    query_heads = int(config.num_attention_heads)
    mistakes = [  # (what the answer would be, in MiB, with that mistake; what went wrong)
        (right / 2 / mib, "you counted the keys only: every layer stores keys and values (x 2)"),
        (right * query_heads / kv_heads(config) / mib, f"you used the {query_heads} query heads; the cache holds "
                                                       f"the {kv_heads(config)} key/value heads only (grouped-query "
                                                       "attention)"),
        (right / batch_size / mib, f"the cache holds one copy per sequence of the batch (x {batch_size})"),
        (right / element * 4 / mib, f"an element of {dtype} takes {element} bytes, not 4"),
        (right / element / mib, f"multiply by the {element} bytes of each element"),
        (right / head_dim(config) / mib, f"each head stores head_dim = {head_dim(config)} numbers per position"),
        (right / config.num_hidden_layers / mib, f"every one of the {config.num_hidden_layers} layers has its own "
                                                 "cache"),
        (right, "that is bytes: divide by 2**20 for MiB"),
        (right / 1e6, "that is MB (10**6 bytes): divide by 2**20 for MiB"),
    ]
    for wrong, hint in mistakes:
        if not math.isclose(wrong, right / mib, rel_tol=1e-9) and math.isclose(value, wrong, rel_tol=1e-6):
            raise CheckFailed(f"{name}: you have {value:.2f}, expected {right / mib:.2f} MiB: {hint}.")
    raise CheckFailed(f"{name}: you have {value:.2f}, expected {right / mib:.2f} MiB: layers x 2 x kv-heads x "
                      f"head_dim x positions x bytes per element x batch, divided by 2**20.")


def check_cached_loop(name: str, sequence, past_key_values, expected, tokenizer) -> None:
    """A hand-written cached loop: its cache holds each fed position once, and its tokens equal the reference."""
    __tracebackhide__ = True  # noqa: F841
    ids = torch.as_tensor(sequence)
    if ids.dim() != 2:
        raise CheckFailed(f"{name}: sequence must be [batch, positions], got shape {tuple(ids.shape)}.")
    if not hasattr(past_key_values, "get_seq_length"):
        raise CheckFailed(f"{name}: past_key_values must be the cache your loop used (a DynamicCache), got "
                          f"{type(past_key_values).__name__}.")
    cached, fed = past_key_values.get_seq_length(), ids.shape[1] - 1  # the last chosen token is never fed
    if cached > fed:
        raise CheckFailed(f"{name}: the cache holds {cached} positions for a sequence of {ids.shape[1]} tokens "
                          f"(expected {fed}): you fed positions the cache already had. With past_key_values, "
                          "feed only the newest token, next_token_id, shape [1, 1].")
    if cached < fed:
        raise CheckFailed(f"{name}: the cache holds {cached} positions, expected {fed}: pass the same "
                          "past_key_values (or out.past_key_values) to every step, with use_cache=True.")
    check_token_ids(name, ids, expected, tokenizer)


# --- notebook 05 ---

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
    a = [int(t) for t in torch.as_tensor(answer).flatten()]
    e = [int(t) for t in torch.as_tensor(expected).flatten()]
    if len(a) != len(e):
        raise CheckFailed(f"{name}: you have {len(a)} labels, expected {len(e)}: one label per input id.")
    for i, (x, y) in enumerate(zip(a, e)):
        if x == y:
            continue
        if y == -100:
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
    right = ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
    if not isinstance(answer, (int, float, np.number)) and not (isinstance(answer, torch.Tensor) and answer.numel() == 1):
        raise CheckFailed(f"{name}: expected a number (a float or a one-element tensor), got {type(answer).__name__}.")
    value = float(answer)
    if math.isclose(value, float(right), abs_tol=1e-4):
        print(f"✔ {name}")
        return
    mistakes = {
        "you did not shift: position t predicts token t + 1, so compare logits[:, :-1] with labels[:, 1:]":
            ce(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100),
        "you summed instead of averaging over the learned positions":
            ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"),
        "you averaged over every position, masked ones included: skip the -100 labels (ignore_index=-100)":
            ce(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            / labels[:, 1:].numel(),
    }
    for hint, wrong in mistakes.items():
        if math.isclose(value, float(wrong), abs_tol=1e-4):
            raise CheckFailed(f"{name}: you have {value:.4f}, expected {float(right):.4f}: {hint}.")
    raise CheckFailed(f"{name}: you have {value:.4f}, expected {float(right):.4f}: the mean cross-entropy of "
                      "logits[:, :-1] against labels[:, 1:] over the positions whose label is not -100.")


# --- notebook 06 ---

def check_cfg_scores(name: str, answer, cond_logits, uncond_logits, guidance_scale: float,
                     blend: float | None = None) -> None:
    """Compare CFG scores with uncond + g * (cond - uncond) on log-softmaxed branches (then the blend); name the slip."""
    __tracebackhide__ = True  # noqa: F841
    from .cfg import guide

    cond_logits, uncond_logits = torch.as_tensor(cond_logits).float(), torch.as_tensor(uncond_logits).float()
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


# --- notebook 07 ---

def check_spliced_labels(name: str, answer, expected) -> None:
    """Compare labels after the image splice; name the first wrong position and what belongs there."""
    __tracebackhide__ = True  # noqa: F841
    a = [int(t) for t in torch.as_tensor(answer).flatten()]
    e = [int(t) for t in torch.as_tensor(expected).flatten()]
    if len(a) != len(e):
        raise CheckFailed(
            f"{name}: you have {len(a)} labels, expected {len(e)}: one label per position of the spliced "
            "sequence, where the image placeholder became one position per patch."
        )
    for i, (x, y) in enumerate(zip(a, e)):
        if x != y:
            why = "an image or prompt position: it must be -100" if y == -100 else f"an answer token: keep its id {y}"
            raise CheckFailed(f"{name}: position {i}: you have {x}, expected {y} ({why}).")
    print(f"✔ {name}")


def check_expanded_ids(name: str, answer, expected, image_token_id: int) -> None:
    """Compare LLaVA-style input ids (one placeholder per image feature) and say what is off."""
    __tracebackhide__ = True  # noqa: F841
    a = [int(t) for t in torch.as_tensor(answer).flatten()]
    e = [int(t) for t in torch.as_tensor(expected).flatten()]
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
