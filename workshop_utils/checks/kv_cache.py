"""Checks for notebook 04: positions fed with and without the cache, cache size, the cached loop."""

from __future__ import annotations

import math

import numpy as np
import torch

from .core import CheckFailed, check_token_ids


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
    from ..kv_cache import head_dim, kv_cache_bytes, kv_heads

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
