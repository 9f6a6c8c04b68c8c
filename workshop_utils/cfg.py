"""Classifier-free guidance: reference versions of what notebook 06 builds by hand (their timing is in timing.py).

The recipe is transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor (what
generate(guidance_scale=...) runs): log-softmax the scores of the prompt (conditional) and of an
unconditional context, which is the prompt's last token unless a negative prompt is given, then
take uncond + g * (cond - uncond). guidance_scale == 1 turns it off, as in generate.

Then the setting of the CFG paper: a system instruction as the condition, the same chat without it as the
unconditional branch, and how often the replies follow the instruction at several g.

python -m workshop_utils.cfg adherence   the instruction-following rate at g = 1, 1.5, 3 (and 3 blended)
"""

from __future__ import annotations

import math
import re
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
    """CFG for generate(logits_processor=[...]): runs its own unconditional branch with its own cache.

    negative_prompt_ids is one row for every prompt of the batch, or one row per prompt, left-padded, with
    negative_attention_mask 0 on the padding: then each row's positions count from its first real token, as
    generate does for the prompts (transformers' own processor leaves the positions of a padded row shifted).
    """

    def __init__(self, model, guidance_scale: float, negative_prompt_ids=None, blend: float | None = None, *,
                 negative_attention_mask=None):
        check_guidance(guidance_scale, negative_prompt_ids, blend)
        self.model, self.guidance_scale, self.blend = model, guidance_scale, blend
        self.negative_prompt_ids = None if negative_prompt_ids is None else token_id_rows(
            negative_prompt_ids, "negative_prompt_ids", vocab_size=model.config.vocab_size)
        if negative_attention_mask is not None:
            mask = torch.as_tensor(negative_attention_mask)
            if self.negative_prompt_ids is None or tuple(mask.shape) != tuple(self.negative_prompt_ids.shape):
                raise ValueError("negative_attention_mask must have the shape of negative_prompt_ids. Fix: pass the "
                                 "attention_mask the tokenizer returned with those ids (or none, for no padding).")
            negative_attention_mask = mask.long()
        self.negative_attention_mask = negative_attention_mask
        self.cache: DynamicCache | None = None
        self.seen = 0  # length of input_ids at the last call, to refuse reuse in a second generate

    def _uncond_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        if self.cache is None:  # first call: prefill the unconditional context
            uncond_ids = input_ids[:, -1:] if self.negative_prompt_ids is None else self.negative_prompt_ids
            if uncond_ids.shape[0] not in (1, batch):
                raise ValueError(f"negative_prompt_ids has {uncond_ids.shape[0]} rows for a batch of {batch}. Fix: "
                                 "pass one row for all prompts, or one row per prompt.")
            uncond_ids = uncond_ids.to(input_ids.device).expand(batch, -1)
            mask = (torch.ones_like(uncond_ids) if self.negative_attention_mask is None
                    else self.negative_attention_mask.to(input_ids.device).expand(batch, -1))
            self.cache = DynamicCache(config=self.model.config)
        elif input_ids.shape[1] != self.seen + 1:
            raise ValueError("This CFGLogitsProcessor was already used by another generate call. Fix: make a new one "
                             "for each call (it holds the unconditional branch's cache).")
        else:
            uncond_ids = input_ids[:, -1:]
            mask = torch.cat([self.mask, torch.ones_like(uncond_ids)], dim=1)
        self.seen, self.mask = input_ids.shape[1], mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -uncond_ids.shape[1]:]
        return self.model(uncond_ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                          use_cache=True).logits[:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guidance_scale == 1:  # as transformers' processor: nothing to guide
            return torch.log_softmax(scores, dim=-1)
        return guide(scores, self._uncond_logits(input_ids), self.guidance_scale, self.blend)


# --- does guidance help? an instruction as the condition ------------------------------------------
# The setting of the CFG paper (Sanchez et al. 2023, "Stay on topic with classifier-free guidance"): the
# conditional branch is the conversation with a system instruction, the unconditional branch the same
# conversation without it, so guidance pushes towards what the instruction changes.

QUESTIONS = (
    "What is the capital of France?", "Name a fruit that is yellow.", "What colour is the sky?", "What do bees make?",
    "Which animal barks?", "What is frozen water called?", "What do you use to write on paper?",
    "Which planet do we live on?", "What is the opposite of hot?", "What do cows drink?",
    "Which season comes after winter?", "What is the largest ocean?", "What do you call a baby cat?",
    "Which metal is gold-coloured and precious?", "What gas do plants take in?", "What is the first day of the week?",
    "Which instrument has black and white keys?", "What do you wear on your feet?", "What shape has three sides?",
    "What is the colour of grass?", "Which bird is a symbol of peace?", "What do fish live in?",
    "What is the main language of Spain?", "What do you sleep on?",
)


def one_word(reply: str) -> bool:
    """The rule "answer with one word": exactly one word (letters, digits, ' or -), punctuation aside."""
    return len(re.findall(r"[\w'-]+", reply)) == 1


def all_capitals(reply: str) -> bool:
    """The rule "answer in capital letters": some letters, none of them lower case."""
    return any(c.isalpha() for c in reply) and not any(c.islower() for c in reply)


def broken(reply: str) -> bool:
    """A reply with no letter at all: empty (the model ended its turn at once) or only punctuation."""
    return not any(c.isalpha() for c in reply)


RULES = {"one-word": ("Answer with one word only.", one_word), "capitals": ("Answer in capital letters only.",
                                                                              all_capitals)}


def instruction_inputs(tokenizer, questions, instruction: str):
    """Both branches for each question, templated and left-padded: with the system instruction, and without it.

    Without a system message SmolLM2's template writes its default one: the unconditional branch is the plain
    chat the model was tuned on, and the only difference between the branches is the instruction.
    """
    if not questions:
        raise ValueError("No questions given. Fix: pass at least one question, for example QUESTIONS[:8].")
    if not instruction.strip():
        raise ValueError("The instruction is empty, so both branches would be the same. Fix: pass the system "
                         "instruction to follow, for example RULES['one-word'][0].")
    render = lambda convs: tokenizer.apply_chat_template(  # noqa: E731
        convs, add_generation_prompt=True, padding=True, return_tensors="pt",
        tokenizer_kwargs={"padding_side": "left"})
    cond = render([[{"role": "system", "content": instruction}, {"role": "user", "content": q}] for q in questions])
    uncond = render([[{"role": "user", "content": q}] for q in questions])
    return cond, uncond


@torch.inference_mode()
def instruction_replies(model, tokenizer, questions, instruction: str, guidance_scale: float, *,
                        blend: float | None = None, max_new_tokens: int = 8) -> list[str]:
    """Greedy replies with the instruction as the condition, guided by g against the same chat without it."""
    from .chat import extract_response

    check_guidance(guidance_scale, None, blend)
    check_max_new_tokens(max_new_tokens)
    cond, uncond = (x.to(model.device) for x in instruction_inputs(tokenizer, questions, instruction))
    processor = CFGLogitsProcessor(model, guidance_scale, uncond.input_ids, blend,
                                   negative_attention_mask=uncond.attention_mask)
    output = model.generate(**cond, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=[processor],
                            pad_token_id=tokenizer.pad_token_id)
    return [extract_response(tokenizer, p, o) for p, o in zip(cond.input_ids, output)]


SETTINGS = ((1.0, None), (1.5, None), (3.0, None), (3.0, 0.7))  # (g, blend); blend 0.7 is seed 003's variant


def adherence(model, tokenizer, questions, rule: str = "one-word", settings=SETTINGS, *, max_new_tokens: int = 8,
              batch_size: int = 8, progress=None) -> list[dict]:
    """For each (g, blend): the replies, how many follow the rule and how many are broken (no letter at all)."""
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}. Fix: use one of {', '.join(map(repr, RULES))}.")
    instruction, follows = RULES[rule]
    batches = [questions[i:i + batch_size] for i in range(0, len(questions), batch_size)]
    jobs = [(g, blend, batch) for g, blend in settings for batch in batches]
    replies: dict = {}
    for g, blend, batch in (progress(jobs, desc="batches", total=len(jobs)) if progress else jobs):
        replies.setdefault((g, blend), []).extend(
            instruction_replies(model, tokenizer, batch, instruction, g, blend=blend, max_new_tokens=max_new_tokens))
    return [{"guidance_scale": g, "blend": blend, "replies": r, "follow": sum(map(follows, r)),
             "broken": sum(map(broken, r)), "n": len(r)} for (g, blend), r in replies.items()]


def main(argv: list[str] | None = None) -> int:
    """python -m workshop_utils.cfg adherence."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workshop_utils.cfg",
                                     description="Does guidance make the model follow a system instruction?")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("adherence", help="the instruction-following rate at g = 1, 1.5, 3 (and 3 blended)")
    run.add_argument("--rule", choices=sorted(RULES), default="one-word")
    run.add_argument("-n", type=int, default=len(QUESTIONS), help=f"questions, at most {len(QUESTIONS)}")
    run.add_argument("--max-new-tokens", type=int, default=8)
    run.add_argument("--verbose", action="store_true", help="print every reply")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= len(QUESTIONS):
        parser.error(f"-n {args.n}: there are {len(QUESTIONS)} questions. Fix: pass 1 to {len(QUESTIONS)}.")
    from .display import progress
    from .models import load_model
    from .notebook import setup_notebook

    setup_notebook(seed=0)
    model, tokenizer = load_model(device="cpu")
    rows = adherence(model, tokenizer, QUESTIONS[:args.n], args.rule, max_new_tokens=args.max_new_tokens,
                     progress=progress)
    print(f"rule {args.rule!r}: system prompt {RULES[args.rule][0]!r}, {args.n} questions, greedy, "
          f"at most {args.max_new_tokens} new tokens")
    for row in rows:
        blend = "" if row["blend"] is None else f", blend {row['blend']}"
        print(f"g = {row['guidance_scale']}{blend}: follows the rule {row['follow']} of {row['n']} "
              f"({row['follow'] / row['n']:.0%}), broken {row['broken']} of {row['n']}")
        for question, reply in zip(QUESTIONS, row["replies"]) if args.verbose else ():
            print(f"    {question} -> {reply!r}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
