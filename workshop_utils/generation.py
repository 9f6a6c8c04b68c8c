"""Reference generation loops equal to model.generate: greedy, sampling and its filters, and a comparison."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .models import context_length
from .tokens import token_id_rows

__all__ = ["apply_temperature", "top_k_filter", "top_p_filter", "greedy_generate", "sample_generate",
           "compare_with_generate", "Comparison", "check_max_new_tokens", "describe_difference"]


# --- the sampling filters (same results as transformers' warpers, min_tokens_to_keep=1) ---

def _check_temperature(t: float | None) -> None:
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
        raise ValueError(f"temperature must be a finite number above 0, got {t!r}. Fix: for the most likely token at every "
                         "step use greedy decoding (greedy_generate, or generate(do_sample=False)); otherwise pass "
                         "a small positive temperature such as 0.7.")


def _check_top_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1, got {k!r}. Fix: top_k=50 keeps the 50 likeliest "
                         "tokens; top_k=None turns the filter off.")


def _check_top_p(p: float | None) -> None:
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {p!r}. Fix: top_p=0.9 keeps the likeliest tokens that make up "
                         "90% of the probability; top_p=None (or 1.0) turns the filter off.")


def apply_temperature(logits: torch.Tensor, t: float | None) -> torch.Tensor:
    """Divide the logits by the temperature t (None leaves them as they are)."""
    _check_temperature(t)
    return logits if t is None else logits / t


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf (ties with the k-th are kept; None keeps all)."""
    _check_top_k(k)
    if k is None:
        return logits
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Keep the smallest set of likeliest tokens whose probability adds up to more than p (at least one; None keeps all)."""
    _check_top_p(p)
    if p is None:
        return logits
    # Sorted from least to most likely, as TopPLogitsWarper does, so that ties are broken the same way.
    sorted_logits, sorted_ids = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1:] = False  # the likeliest token always stays
    remove = remove_sorted.scatter(-1, sorted_ids, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


# --- the loops ---

def check_max_new_tokens(max_new_tokens: int) -> None:
    """Raise ValueError, naming the fix, unless max_new_tokens is a whole number of at least 1."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}. "
                         "Fix: max_new_tokens=20 writes up to 20 new tokens.")


def _prompt(model, input_ids, max_new_tokens: int, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checked 2-D input_ids and attention_mask; every ValueError comes before any forward pass."""
    check_max_new_tokens(max_new_tokens)
    ids = token_id_rows(input_ids, "input_ids", vocab_size=getattr(model.config, "vocab_size", None))
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).to(ids.device)
        mask = mask[None] if mask.dim() == 1 else mask
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(ids.shape)}. "
                             "Fix: pass the attention_mask the tokenizer returned with these input_ids.")
        empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"The prompt of row {empty[0]} is empty (its attention_mask is all 0). "
                             "Fix: give every row at least one token.")
        right = ((mask[:, :-1] != 0) & (mask[:, 1:] == 0)).any(-1).nonzero().flatten().tolist()
        if right:  # new tokens go on the right, so padding must be on the left
            raise ValueError(f"Row {right[0]} of attention_mask has padding after its tokens (right padding), but new "
                             "tokens are added on the right. Fix: tokenizer.padding_side = 'left', then tokenize "
                             "again and pass that attention_mask with those input_ids.")
    limit = context_length(model)
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"The prompt ({ids.shape[1]} tokens) plus max_new_tokens={max_new_tokens} is "
                         f"{ids.shape[1] + max_new_tokens} positions, beyond the model's context of {limit}. "
                         + (f"Fix: use max_new_tokens <= {limit - ids.shape[1]} or a shorter prompt."
                            if ids.shape[1] < limit else f"Fix: shorten the prompt to at most {limit - 1} tokens "
                            "(it alone fills the context)."))
    return ids.to(model.device), mask


def eos_ids(model, eos_token_id: int | Sequence[int] | None = None) -> list[int]:
    """The end-of-sequence ids to stop at: eos_token_id if given, else the model's generation_config."""
    if eos_token_id is None:
        eos_token_id = model.generation_config.eos_token_id
    if eos_token_id is None:
        return []
    ids = [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    if isinstance(ids, str) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"eos_token_id must be a token id (an int) or a list of them, got {eos_token_id!r}. "
                         "Fix: pass tokenizer.eos_token_id, or tokenizer.convert_tokens_to_ids('<|im_end|>').")
    return [int(i) for i in ids]


def _pad_id(model, eos: list[int]) -> int | None:
    pad = model.generation_config.pad_token_id
    return int(pad) if pad is not None else (eos[0] if eos else None)  # generate falls back to the first EOS


def _forward_extras(model) -> dict:
    # generate asks for the last position's logits only when the model allows it (same numbers, less work).
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.inference_mode()
def _loop(model, input_ids, mask, max_new_tokens: int, use_cache: bool, eos: list[int],
          pick: Callable[[torch.Tensor], torch.Tensor], return_logits: bool = False):
    """The autoregressive loop shared by greedy and sampling: forward, last position, pick, append, stop.

    With return_logits, also the logits each step picked from, [batch, steps, vocab] in float32 (what
    generate(output_logits=True) returns), so that compare_with_generate can set this loop's own numbers
    against generate's.
    """
    from transformers import DynamicCache

    pad = _pad_id(model, eos)
    full_mask = torch.ones_like(input_ids) if mask is None else mask.to(input_ids.device).long()
    # Like generate: a mask of all ones is dropped (no padding), which lets attention use its causal fast path.
    keep_mask = not bool(full_mask.all())
    cache = DynamicCache(config=model.config.get_text_config(decoder=True)) if use_cache else None
    extras = _forward_extras(model)
    sequence = input_ids
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_logits = []
    for step in range(max_new_tokens):
        # Left padding: each row counts positions from its first real token, as generate does.
        position_ids = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
        fed = sequence[:, -1:] if use_cache and step > 0 else sequence
        outputs = model(input_ids=fed, attention_mask=full_mask if keep_mask else None,
                        position_ids=position_ids[:, -fed.shape[1]:], past_key_values=cache,
                        use_cache=use_cache, **extras)
        if use_cache:
            cache = outputs.past_key_values
        logits = outputs.logits[:, -1].float()
        if return_logits:
            step_logits.append(logits)
        next_ids = pick(logits)
        if eos:
            next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, pad))  # finished rows get padding
        sequence = torch.cat([sequence, next_ids[:, None]], dim=-1)
        full_mask = torch.cat([full_mask, full_mask.new_ones((full_mask.shape[0], 1))], dim=-1)
        if eos:
            unfinished &= ~torch.isin(next_ids, torch.tensor(eos, device=next_ids.device))
            if not unfinished.any():
                break
    return (sequence, torch.stack(step_logits, dim=1)) if return_logits else sequence


def greedy_generate(model, input_ids, max_new_tokens: int, *, attention_mask=None, use_cache: bool = True,
                    eos_token_id: int | Sequence[int] | None = None, return_logits: bool = False):
    """Prompt plus up to max_new_tokens argmax tokens, equal to model.generate(..., do_sample=False).

    return_logits=True returns (ids, logits): the logits of every step, [batch, steps, vocab], for
    compare_with_generate(..., ours_logits=logits).
    """
    ids, mask = _prompt(model, input_ids, max_new_tokens, attention_mask)
    return _loop(model, ids, mask, max_new_tokens, use_cache, eos_ids(model, eos_token_id),
                 lambda logits: logits.argmax(-1), return_logits)


def warp(logits: torch.Tensor, temperature: float | None = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the order generate applies them in."""
    if temperature is not None and temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    logits = top_k_filter(logits, top_k)
    return top_p_filter(logits, top_p) if top_p is not None and top_p < 1.0 else logits


def sample_generate(model, input_ids, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, seed: int | None = None, attention_mask=None,
                    use_cache: bool = True, eos_token_id: int | Sequence[int] | None = None,
                    return_logits: bool = False):
    """Seeded sampling equal to torch.manual_seed(seed) then generate(do_sample=True, ...); top_k=None is top_k=0 there.

    return_logits=True returns (ids, logits), the raw logits of every step before temperature and filters.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be a whole number, got {seed!r}. Fix: seed=0 (any int), or None for no seeding.")
    ids, mask = _prompt(model, input_ids, max_new_tokens, attention_mask)
    if seed is not None:
        torch.manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = warp(logits, temperature, top_k, top_p).softmax(-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)  # one draw per row, as generate does

    return _loop(model, ids, mask, max_new_tokens, use_cache, eos_ids(model, eos_token_id), pick, return_logits)


# --- comparing with generate ---

@dataclass
class Comparison:
    """Ours against generate: equal or not, where they first differ, and how far the logits were apart."""

    equal: bool
    row: int | None  # the first row that differs
    position: int | None  # index in the sequence (prompt included) of the first difference
    new_token_index: int | None  # the same, counted from the first new token
    ours_token: int | None  # None: our sequence had already ended there
    generate_token: int | None
    max_logit_diff: float  # generate's logits against ours (see logits_from), up to and with the first difference
    gap_at_difference: float | None  # generate's logit of its token minus that of ours, where they differ
    ours_label: str | None = None
    generate_label: str | None = None
    generate_ids: torch.Tensor | None = field(default=None, repr=False)
    # "your loop": the logits the loop itself picked from (ours_logits=...); "one forward pass": recomputed
    logits_from: str = "one forward pass"
    step_logit_diffs: torch.Tensor | None = field(default=None, repr=False)  # [steps]: largest difference per step

    def _difference(self, where: str = "") -> str:
        source = "your loop's logits" if self.logits_from == "your loop" else "one forward pass over your tokens"
        return (f"largest logit difference{where} ({source} against generate's): "
                f"{describe_difference(self.max_logit_diff)}")

    def __str__(self) -> str:
        if self.equal:
            return (f"equal to generate, token for token ({self.generate_ids.shape[0]} row(s), "
                    f"{self.generate_ids.shape[1]} positions)\n{self._difference()}")

        def name(token, label):
            return "(ended)" if token is None else f"{token}" + (f" {label!r}" if label is not None else "")

        lines = [f"differs from generate at row {self.row}, position {self.position} "
                 f"(new token {self.new_token_index}): ours {name(self.ours_token, self.ours_label)}, "
                 f"generate {name(self.generate_token, self.generate_label)}",
                 self._difference(" up to there")]
        if self.gap_at_difference is not None:
            lines.append(f"generate's logit gap between the two tokens there: {self.gap_at_difference:.2e}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


FLOAT_NOISE = 1e-3  # float32 rounding of these logits is of order 1e-5; bfloat16's of order 1e-1


def describe_difference(value: float) -> str:
    """A logit difference, with what holds on any CPU: exactly 0, or below FLOAT_NOISE, or above it.

    The digits of a rounding difference change from one CPU to another (tests/nbval_sanitize.cfg hides them);
    the words do not, unless the difference crosses the stated bound.
    """
    if value == 0:
        return "0 (exactly)"
    return f"{value:.2e} ({'below' if value < FLOAT_NOISE else 'above'} {FLOAT_NOISE:.0e})"


def _first_difference(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[int, int] | None:
    """(row, position) of the first difference, row by row; a longer sequence differs where the shorter ended."""
    width = min(ours.shape[1], theirs.shape[1])
    for row in range(ours.shape[0]):
        diff = (ours[row, :width] != theirs[row, :width]).nonzero()
        if len(diff):
            return row, int(diff[0])
        if ours.shape[1] != theirs.shape[1]:
            return row, width
    return None


@torch.inference_mode()
def compare_with_generate(model, input_ids, ours, ours_logits=None, **generate_kwargs) -> Comparison:
    """Run model.generate(input_ids, **generate_kwargs) and compare with our output ids, token by token.

    ours_logits: the logits our loop picked each new token from, [batch, steps, vocab] (or [steps, vocab] for
    one row), e.g. from greedy_generate(..., return_logits=True). Then the logit difference is our loop's own
    numbers against generate's, step by step, up to and with the first differing token (the prefix is still
    the same there). Without it, the logits come from one uncached forward pass over our tokens, which says
    nothing about how our loop computed them.

    Two extra keywords are taken out before calling generate: seed (torch.manual_seed(seed) just before
    generate, for sampling) and tokenizer (to show the differing tokens as text).
    """
    seed = generate_kwargs.pop("seed", None)
    tokenizer = generate_kwargs.pop("tokenizer", None)
    if "stop_strings" in generate_kwargs:
        generate_kwargs["tokenizer"] = tokenizer
    ids = token_id_rows(input_ids, "input_ids").to(model.device)
    ours = token_id_rows(ours, "ours").to(model.device)
    if ours.shape[0] != ids.shape[0] or ours.shape[1] < ids.shape[1] or not torch.equal(ours[:, :ids.shape[1]], ids):
        raise ValueError(f"ours (shape {tuple(ours.shape)}) must start with the prompt (shape {tuple(ids.shape)}), "
                         "as generate's output does. Fix: pass the full output of your loop, prompt included.")
    if "max_new_tokens" not in generate_kwargs and "max_length" not in generate_kwargs:
        # generate's own default (generation_config.max_length) would cut it short or let it run on: give it ours.
        generate_kwargs["max_new_tokens"] = max(ours.shape[1] - ids.shape[1], 1)
    if ours_logits is not None:
        ours_logits = torch.as_tensor(ours_logits)
        ours_logits = ours_logits[None] if ours_logits.dim() == 2 else ours_logits
        new_tokens = ours.shape[1] - ids.shape[1]
        if (ours_logits.dim() != 3 or ours_logits.shape[0] != ids.shape[0]
                or ours_logits.shape[1] < new_tokens or ours_logits.shape[1] > new_tokens + 1):
            raise ValueError(f"ours_logits has shape {tuple(ours_logits.shape)}; for {ids.shape[0]} row(s) and "
                             f"{new_tokens} new tokens it must be [{ids.shape[0]}, {new_tokens}, vocab]: one row "
                             "of logits per new token. Fix: collect out.logits[:, -1] at every step of your loop "
                             "and pass torch.stack(step_logits, dim=1).")
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(ids, return_dict_in_generate=True, output_logits=True, **generate_kwargs)
    theirs, step_logits = out.sequences, torch.stack(out.logits, dim=1).float()  # [batch, steps, vocab]
    found = _first_difference(ours, theirs)
    prompt_len = ids.shape[1]

    last_step = step_logits.shape[1] - 1 if found is None else min(found[1] - prompt_len, step_logits.shape[1] - 1)
    if ours_logits is not None:
        steps = min(last_step + 1, ours_logits.shape[1])
        return _finish(found, ours, theirs, step_logits, ours_logits.to(step_logits.device).float()[:, :steps],
                       steps, prompt_len, tokenizer, "your loop")
    # Logits of one forward pass over our tokens, to set against generate's at each step up to the difference.
    end = min(prompt_len + last_step, ours.shape[1])
    mask = generate_kwargs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).to(ids.device).long()
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], end - prompt_len))], dim=-1)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    steps = end - prompt_len + 1  # positions prompt_len-1 .. end-1 predict the new tokens 0 .. end-prompt_len
    keep = {"logits_to_keep": steps} if _forward_extras(model) else {}
    ours_logits = model(input_ids=ours[:, :end], attention_mask=mask, position_ids=position_ids,
                        **keep).logits.float()[:, -steps:]
    return _finish(found, ours, theirs, step_logits, ours_logits, steps, prompt_len, tokenizer, "one forward pass")


def _finish(found, ours, theirs, step_logits, ours_logits, steps, prompt_len, tokenizer, logits_from) -> Comparison:
    theirs_logits = step_logits[:, :steps]
    finite = torch.isfinite(ours_logits) & torch.isfinite(theirs_logits)
    per_step = (ours_logits - theirs_logits).abs().where(finite, 0).amax(dim=(0, 2)) if steps > 0 else None
    max_diff = float(per_step.max()) if steps > 0 else 0.0
    extra = dict(logits_from=logits_from, step_logit_diffs=per_step)

    if found is None:
        return Comparison(True, None, None, None, None, None, max_diff, None, generate_ids=theirs, **extra)
    row, position = found
    ours_token = int(ours[row, position]) if position < ours.shape[1] else None
    their_token = int(theirs[row, position]) if position < theirs.shape[1] else None
    gap = None
    step = position - prompt_len
    if ours_token is not None and their_token is not None and step < step_logits.shape[1]:
        gap = float(step_logits[row, step, their_token] - step_logits[row, step, ours_token])

    def label(token):
        return None if tokenizer is None or token is None else tokenizer.decode([token])

    return Comparison(False, row, position, step, ours_token, their_token, max_diff, gap,
                      label(ours_token), label(their_token), theirs, **extra)
