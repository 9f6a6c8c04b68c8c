"""Classifier-free guidance: reference versions of what notebook 06 builds by hand (their timing is in timing.py).

The recipe is transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor (what
generate(guidance_scale=...) runs): log-softmax the scores of the prompt (conditional) and of an
unconditional context, which is the prompt's last token unless a negative prompt is given, then
take uncond + g * (cond - uncond). guidance_scale == 1 turns it off, as in generate.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import DynamicCache, LogitsProcessor

from .generation import check_max_new_tokens, eos_ids
from .tokens import token_id_rows


# --- checks, before any forward pass --------------------------------------------------------------

def check_guidance(guidance_scale: float, negative_prompt_ids=None, blend: float | None = None) -> None:
    """Raise ValueError, naming the fix, for a guidance scale below 0, an empty negative prompt or a bad blend."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a number (finite), got {guidance_scale!r}. Fix: for example 1.5 "
                         "(1 turns guidance off).")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale is {guidance_scale}, below 0. Fix: use 0 or more (1 turns guidance off, "
                         "0 keeps only the unconditional branch, above 1 pushes away from it).")
    if negative_prompt_ids is not None and torch.as_tensor(negative_prompt_ids).numel() == 0:
        raise ValueError("negative_prompt_ids is empty. Fix: pass at least one token id, or None to use the prompt's "
                         "last token as the unconditional branch.")
    if blend is not None and (isinstance(blend, bool) or not isinstance(blend, (int, float))
                              or not 0 <= blend <= 1):
        raise ValueError(f"blend must be None or a number from 0 to 1, got {blend!r}. Fix: blend=1 is plain CFG, "
                         "blend=0 plain greedy, 0.5 halfway.")


def _check_call(model, input_ids, max_new_tokens: int, guidance_scale: float, negative_prompt_ids,
                blend: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    check_guidance(guidance_scale, negative_prompt_ids, blend)
    check_max_new_tokens(max_new_tokens)
    vocab = model.config.vocab_size
    input_ids = token_id_rows(input_ids, "input_ids", vocab_size=vocab, one_row=True, allow_empty=True)
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the prompt needs at least one token (its last token is also the "
                         "default unconditional branch). Fix: pass a prompt of one token or more.")
    negative = None if negative_prompt_ids is None else token_id_rows(negative_prompt_ids, "negative_prompt_ids",
                                                                      vocab_size=vocab, one_row=True)
    return input_ids.to(model.device), None if negative is None else negative.to(model.device)


# --- the formula ----------------------------------------------------------------------------------

def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float,
          blend: float | None = None) -> torch.Tensor:
    """CFG scores from the last-position logits of both branches: uncond + g * (cond - uncond), then the blend."""
    cond = torch.log_softmax(cond_logits.float(), dim=-1)
    uncond = torch.log_softmax(uncond_logits.float(), dim=-1)
    scores = guidance_scale * (cond - uncond) + uncond  # transformers' order of operations, to match it bit for bit
    if blend is not None:
        scores = blend * scores + (1 - blend) * cond
    return scores


# --- two passes, two caches -----------------------------------------------------------------------

class _TwoPass:
    """The conditional and unconditional branches as two models calls per step, each with its own DynamicCache."""

    def __init__(self, model, input_ids: torch.Tensor, uncond_ids: torch.Tensor):
        self.model, self.input_ids, self.uncond_ids = model, input_ids, uncond_ids
        self.cond_cache = DynamicCache(config=model.config)
        self.uncond_cache = DynamicCache(config=model.config)
        self.cond_length, self.uncond_length = input_ids.shape[1], uncond_ids.shape[1]

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill both branches; their logits at the last position."""
        positions = torch.arange(self.cond_length, device=self.input_ids.device)[None]
        cond = self.model(self.input_ids, position_ids=positions, past_key_values=self.cond_cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]
        uncond = self.model(self.uncond_ids, attention_mask=torch.ones_like(self.uncond_ids),
                            past_key_values=self.uncond_cache, use_cache=True).logits[:, -1]
        return cond, uncond

    def cond_only(self) -> torch.Tensor:
        positions = torch.arange(self.cond_length, device=self.input_ids.device)[None]
        return self.model(self.input_ids, position_ids=positions, past_key_values=self.cond_cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]

    def step(self, next_token_id: torch.Tensor, *, guided: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed one new token [1, 1] to both branches; their logits for the token after it."""
        positions = torch.tensor([[self.cond_length]], device=next_token_id.device)
        cond = self.model(next_token_id, position_ids=positions, past_key_values=self.cond_cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]
        self.cond_length += 1
        if not guided:
            return cond, None
        self.uncond_length += 1
        mask = torch.ones(1, self.uncond_length, dtype=torch.long, device=next_token_id.device)
        uncond = self.model(next_token_id, attention_mask=mask, past_key_values=self.uncond_cache,
                            use_cache=True).logits[:, -1]
        return cond, uncond

    def caches(self) -> list[DynamicCache]:
        return [self.cond_cache, self.uncond_cache]


# --- one pass, the batch doubled ------------------------------------------------------------------

class _Batched:
    """Both branches as the two rows of one batch: left padding, an attention mask, positions from the mask."""

    def __init__(self, model, input_ids: torch.Tensor, uncond_ids: torch.Tensor):
        self.model = model
        width = max(input_ids.shape[1], uncond_ids.shape[1])
        pad = model.generation_config.pad_token_id
        pad = 0 if pad is None else int(pad if isinstance(pad, int) else torch.as_tensor(pad).flatten()[0])
        rows, masks = [], []
        for ids in (input_ids, uncond_ids):
            padding = width - ids.shape[1]
            rows.append(torch.cat([ids.new_full((1, padding), pad), ids], dim=1))
            masks.append(torch.cat([ids.new_zeros((1, padding)), torch.ones_like(ids)], dim=1))
        self.input_ids, self.attention_mask = torch.cat(rows), torch.cat(masks)
        self.cache = DynamicCache(config=model.config)

    def _forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        logits = self.model(input_ids, attention_mask=self.attention_mask, position_ids=positions,
                            past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return logits[:1], logits[1:]

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(self.input_ids)

    def step(self, next_token_id: torch.Tensor, *, guided: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1)
        return self._forward(next_token_id.expand(2, 1))

    def caches(self) -> list[DynamicCache]:
        return [self.cache]


# --- the loop -------------------------------------------------------------------------------------

@torch.inference_mode()
def _guided_loop(model, input_ids, max_new_tokens: int, guidance_scale: float, negative_prompt_ids, batched: bool,
                 blend: float | None, forced_ids: torch.Tensor | None = None, clock: list[float] | None = None,
                 stop_at_eos: bool = True):
    """Greedy CFG loop; returns (output ids [1, T + n], per-step scores, branches); clock gets a time per new token."""
    input_ids, negative = _check_call(model, input_ids, max_new_tokens, guidance_scale, negative_prompt_ids, blend)
    uncond_ids = input_ids[:, -1:] if negative is None else negative
    guided = guidance_scale != 1  # generate adds no CFG processor for 1: plain greedy on the logits
    branches = (_Batched if batched and guided else _TwoPass)(model, input_ids, uncond_ids)
    eos, ids = eos_ids(model), input_ids
    scores = {"cond": [], "uncond": [], "guided": []}
    cond, uncond = branches.first() if guided else (branches.cond_only(), None)
    for step in range(max_new_tokens):
        step_scores = guide(cond, uncond, guidance_scale, blend) if guided else cond.float()
        scores["guided"].append(step_scores[0])
        scores["cond"].append(torch.log_softmax(cond[0].float(), dim=-1))
        if guided:
            scores["uncond"].append(torch.log_softmax(uncond[0].float(), dim=-1))
        next_token_id = step_scores.argmax(-1, keepdim=True) if forced_ids is None else forced_ids[:, step:step + 1]
        ids = torch.cat([ids, next_token_id], dim=1)
        if clock is not None:
            clock.append(time.perf_counter())
        if step + 1 == max_new_tokens or (stop_at_eos and forced_ids is None and int(next_token_id) in eos):
            break
        cond, uncond = branches.step(next_token_id, guided=guided)
    return ids, {k: torch.stack(v) if v else None for k, v in scores.items()}, branches


def cfg_generate(model, input_ids, max_new_tokens: int, *, guidance_scale: float, negative_prompt_ids=None,
                 batched: bool = False, blend: float | None = None) -> torch.LongTensor:
    """Greedy generation with classifier-free guidance; equals generate(guidance_scale=...) when blend is None."""
    return _guided_loop(model, input_ids, max_new_tokens, guidance_scale, negative_prompt_ids, batched, blend)[0]


def cfg_step_scores(model, input_ids, continuation_ids, *, guidance_scale: float, negative_prompt_ids=None,
                    batched: bool = False, blend: float | None = None) -> dict[str, torch.Tensor | None]:
    """Along a given continuation: each step's log-probabilities of both branches and the guided scores, [steps, vocab].

    Keys: "cond" and "uncond" (log-softmax of each branch; "uncond" is None when guidance_scale == 1) and
    "guided" (what the greedy choice is made on: uncond + g * (cond - uncond), blended if asked).
    """
    continuation = token_id_rows(continuation_ids, "continuation_ids", one_row=True)
    return _guided_loop(model, input_ids, continuation.shape[1], guidance_scale, negative_prompt_ids, batched, blend,
                        forced_ids=continuation.to(model.device))[1]


# --- the same as a LogitsProcessor ----------------------------------------------------------------

class CFGLogitsProcessor(LogitsProcessor):
    """CFG for generate(logits_processor=[...]): runs its own unconditional branch with its own cache."""

    def __init__(self, model, guidance_scale: float, negative_prompt_ids=None, blend: float | None = None):
        check_guidance(guidance_scale, negative_prompt_ids, blend)
        self.model, self.guidance_scale, self.blend = model, guidance_scale, blend
        self.negative_prompt_ids = None if negative_prompt_ids is None else token_id_rows(
            negative_prompt_ids, "negative_prompt_ids", vocab_size=model.config.vocab_size, one_row=True)
        self.cache: DynamicCache | None = None
        self.seen = 0  # length of input_ids at the last call, to refuse reuse in a second generate

    def _uncond_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.cache is None:  # first call: prefill the unconditional context
            uncond_ids = input_ids[:, -1:] if self.negative_prompt_ids is None else self.negative_prompt_ids
            uncond_ids = uncond_ids.to(input_ids.device).expand(input_ids.shape[0], -1)
            self.cache, self.length = DynamicCache(config=self.model.config), uncond_ids.shape[1]
        elif input_ids.shape[1] != self.seen + 1:
            raise ValueError("This CFGLogitsProcessor was already used by another generate call. Fix: make a new one "
                             "for each call (it holds the unconditional branch's cache).")
        else:
            uncond_ids, self.length = input_ids[:, -1:], self.length + 1
        self.seen = input_ids.shape[1]
        mask = torch.ones(uncond_ids.shape[0], self.length, dtype=torch.long, device=input_ids.device)
        return self.model(uncond_ids, attention_mask=mask, past_key_values=self.cache, use_cache=True).logits[:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guidance_scale == 1:  # as transformers' processor: nothing to guide
            return torch.log_softmax(scores, dim=-1)
        return guide(scores, self._uncond_logits(input_ids), self.guidance_scale, self.blend)
