"""Chat templates in code: run a turn, cut out the reply, build assistant-only loss labels.

python -m workshop_utils.chat cot   chain-of-thought against direct answers on small arithmetic questions
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Mapping, Sequence

import torch

from .generation import check_max_new_tokens
from .paths import positive_int
from .tokens import _render, check_messages, token_id_rows

IGNORE_INDEX = -100  # labels with this value add nothing to the loss
Messages = Sequence[Mapping[str, str]]


# --- conversations and the template ---------------------------------------------------------------

def _check_conversation(messages: Messages, *, for_reply: bool) -> None:
    """Raise ValueError, naming the fix, if messages is no conversation a template can render (or reply to)."""
    check_messages(messages)  # roles included
    if for_reply and messages[-1]["role"] == "assistant":
        raise ValueError("The conversation already ends with the assistant's message, so there is nothing to "
                         "reply to: append the next user message first.")


# --- cutting out the reply ------------------------------------------------------------------------

def extract_response(tokenizer, prompt_ids, output_ids, *, eos_token_id: int | Sequence[int] | None = None) -> str:
    """The reply in generate's output: the ids after the prompt, up to the first end-of-turn id, decoded."""
    prompt, output = (token_id_rows(ids, name, one_row=True, allow_empty=True)[0].tolist()
                      for ids, name in ((prompt_ids, "prompt_ids"), (output_ids, "output_ids")))
    if output[:len(prompt)] != prompt:
        raise ValueError("output_ids do not start with prompt_ids. Fix: pass the same row of the prompt and of "
                         "generate's output (generate(inputs_embeds=...) returns only the new ids: then pass "
                         "an empty prompt).")
    ends = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    ends = {ends} if isinstance(ends, int) else set(ends)
    new_ids = output[len(prompt):]
    cut = next((k for k, token in enumerate(new_ids) if token in ends), len(new_ids))
    # Keep any other special token the model wrote: put back into the conversation, it stays a special token.
    return tokenizer.decode(new_ids[:cut], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def chat_replies(model, tokenizer, conversations: Sequence[Messages], *, max_new_tokens: int = 128,
                 **generate_kwargs) -> list[str]:
    """One reply per conversation, generated together as one left-padded batch (greedy unless told)."""
    if not conversations:
        raise ValueError("No conversations given. Fix: pass a list of conversations (each a list of messages).")
    check_max_new_tokens(max_new_tokens)
    for messages in conversations:
        _check_conversation(messages, for_reply=True)
    inputs = _render(tokenizer, [list(m) for m in conversations], add_generation_prompt=True, padding=True,
                    return_tensors="pt", tokenizer_kwargs={"padding_side": "left"}).to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    eos = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    return [extract_response(tokenizer, p, o, eos_token_id=eos) for p, o in zip(inputs.input_ids, output)]


def chat_turn(model, tokenizer, messages: Messages, *, max_new_tokens: int = 128, **generate_kwargs) -> str:
    """Run one turn: template messages, generate (greedy unless told), return the reply; messages stay as they are."""
    return chat_replies(model, tokenizer, [messages], max_new_tokens=max_new_tokens, **generate_kwargs)[0]


# --- assistant-only labels ------------------------------------------------------------------------

def _assistant_span(tokenizer, messages: Messages, i: int, text: str) -> tuple[int, int, int]:
    """Characters of message i's content in text, and where its turn ends, from renders of prefixes."""
    head = ""
    if i > 0:
        head = _render(tokenizer, list(messages[:i]), tokenize=False, add_generation_prompt=True)
        if not text.startswith(head):  # a template without a generation prompt, or one that changes it
            head = _render(tokenizer, list(messages[:i]), tokenize=False)
        if not text.startswith(head):
            raise ValueError(f"Message {i}: this chat template renders the earlier messages differently once more "
                             "follow, so the assistant's text cannot be located. Fix: build these labels by hand.")
    turn = _render(tokenizer, list(messages[:i + 1]), tokenize=False)
    turn_end = len(turn) if text.startswith(turn) else len(text)
    content = messages[i]["content"]
    for needle in (content, content.strip()):  # some templates strip or trim the content
        at = text.find(needle, len(head), turn_end)
        if at >= 0:
            return at, at + len(needle), turn_end
    raise ValueError(f"Message {i}: the chat template changed the assistant's text beyond stripping spaces, so it "
                     "cannot be located in the rendered conversation. Fix: build these labels by hand.")


def assistant_labels(tokenizer, messages: Messages) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] of the templated conversation, and labels: -100 except the assistant's tokens and end of turn."""
    _check_conversation(messages, for_reply=False)
    text = _render(tokenizer, list(messages), tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if ids != _render(tokenizer, list(messages), return_dict=False):
        raise ValueError("Tokenizing the rendered text does not give apply_chat_template's ids. Fix: use a "
                         "fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)).")
    special = set(tokenizer.all_special_ids) | {k for k, t in tokenizer.added_tokens_decoder.items() if t.special}
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end, turn_end = _assistant_span(tokenizer, messages, i, text)
        # The assistant's tokens: every token that overlaps its content (an empty reply has none) ...
        learned = [k for k, (s, e) in enumerate(offsets) if s < end and e > start]
        # ... then on to the first special token after the content, inside the turn: the end of turn.
        after = [k for k, (s, e) in enumerate(offsets) if s >= end and s < turn_end]
        end_of_turn = next((k for k in after if ids[k] in special), None)
        if end_of_turn is not None:
            learned += [k for k in after if k <= end_of_turn and k not in learned]
        for k in learned:
            labels[k] = ids[k]
    return torch.tensor([ids]), torch.tensor([labels])


# --- chain of thought: two rounds against one -----------------------------------------------------

DIRECT = "{question} Answer with a single number."
REASON = "{question} Think step by step."
ANSWER_NOW = "Now answer with a single number."
_WORDS = ("cat", "tree", "apple", "house", "banana", "dog", "river", "pencil", "garden", "moon", "window", "bread")


def arithmetic_questions(n: int, *, seed: int = 0) -> list[tuple[str, int]]:
    """n different small arithmetic and counting questions with their answers, the same for the same seed."""
    kinds = [
        lambda a, b, word: (f"What is {a} + {b}?", a + b),
        lambda a, b, word: (f"What is {a + b} minus {b}?", a),
        lambda a, b, word: (f"What is {a} times {b}?", a * b),
        lambda a, b, word: (f"Sam has {a} apples and gets {b} more. How many apples does Sam have now?", a + b),
        lambda a, b, word: (f"There are {a + b} birds on a tree and {b} fly away. How many birds are left?", a),
        lambda a, b, word: (f"How many legs do {a} dogs have?", 4 * a),
        lambda a, b, word: (f"How many letters are in the word '{word}'?", len(word)),
    ]
    most = len(kinds) * 8  # the dogs question has only 8 versions (2 to 9 dogs); the others have more
    if n > most:
        raise ValueError(f"n={n}: there are {most} different questions of these kinds. Fix: ask for at most {most}.")
    rng = random.Random(seed)
    questions: list[tuple[str, int]] = []
    while len(questions) < n:
        question = kinds[len(questions) % len(kinds)](rng.randint(2, 9), rng.randint(2, 9), rng.choice(_WORDS))
        if question not in questions:
            questions.append(question)
    return questions


def numbers(reply: str) -> list[int]:
    """The whole numbers written in a reply, in order."""
    return [int(x) for x in re.findall(r"-?\d+", reply)]


def first_number(reply: str) -> int | None:
    """The first whole number written in a reply (what a program reading the answer would take)."""
    found = numbers(reply)
    return found[0] if found else None


def chain_of_thought(model, tokenizer, questions: Sequence[tuple[str, int]], *, reason_tokens: int = 64,
                     answer_tokens: int = 12) -> list[dict]:
    """Ask each question directly and in two rounds (reason, then answer); one row of results per question."""
    asks = [[{"role": "user", "content": REASON.format(question=q)}] for q, _ in questions]
    direct = chat_replies(model, tokenizer, [[{"role": "user", "content": DIRECT.format(question=q)}]
                                             for q, _ in questions], max_new_tokens=answer_tokens)
    reasoning = chat_replies(model, tokenizer, asks, max_new_tokens=reason_tokens)
    answers = chat_replies(model, tokenizer, [[*ask, {"role": "assistant", "content": r},
                                               {"role": "user", "content": ANSWER_NOW}]
                                              for ask, r in zip(asks, reasoning)], max_new_tokens=answer_tokens)
    return [{"question": q, "truth": truth, "direct": d, "reasoning": r, "answer": a,
             "direct_right": first_number(d) == truth, "cot_right": first_number(a) == truth,
             "direct_anywhere": truth in numbers(d), "cot_anywhere": truth in numbers(a)}
            for (q, truth), d, r, a in zip(questions, direct, reasoning, answers)]


def main(argv: list[str] | None = None) -> int:
    """python -m workshop_utils.chat cot."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cot = commands.add_parser("cot", help="count right answers with and without a reasoning round")
    cot.add_argument("-n", type=positive_int, default=42, help="number of questions")
    cot.add_argument("--seed", type=int, default=0, help="which questions")
    cot.add_argument("--batch-size", type=positive_int, default=7)
    cot.add_argument("--reason-tokens", type=positive_int, default=64, help="max_new_tokens of the reasoning round")
    cot.add_argument("--verbose", action="store_true", help="print every reply")
    args = parser.parse_args(argv)  # every argument checked before the model loads
    from .display import progress
    from .models import load_model
    from .notebook import setup_notebook

    setup_notebook(seed=0)
    model, tokenizer = load_model(device="cpu")
    questions = arithmetic_questions(args.n, seed=args.seed)
    rows = []
    batches = range(0, len(questions), args.batch_size)
    for start in progress(batches, desc="questions", total=len(batches)):
        rows += chain_of_thought(model, tokenizer, questions[start:start + args.batch_size],
                                 reason_tokens=args.reason_tokens)
    for row in rows if args.verbose else []:
        print(f"{row['question']} ({row['truth']})\n  direct: {row['direct']!r}\n  reasoning: {row['reasoning']!r}"
              f"\n  answer: {row['answer']!r}")
    n = len(rows)
    print(f"{n} questions (seed {args.seed}), greedy, reasoning round of at most {args.reason_tokens} tokens")
    count = {key: sum(r[key] for r in rows) for key in ("direct_right", "cot_right", "direct_anywhere", "cot_anywhere")}
    print(f"{'':32}direct  after a reasoning round")
    print(f"{'first number right':32}{count['direct_right']:3d}     {count['cot_right']:3d}   (of {n})")
    print(f"{'right number anywhere in reply':32}{count['direct_anywhere']:3d}     {count['cot_anywhere']:3d}   (of {n})")
    print(f"first number right both ways: {sum(r['direct_right'] and r['cot_right'] for r in rows)} of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
