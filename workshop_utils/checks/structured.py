"""Checks for notebook 13: a stopping criterion, an incremental decoder, allowed-token sets, the first forbidden token."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.stopping_criteria import StopStringCriteria

from .core import CheckFailed, check, first_difference

# Texts and stop strings on which a stopping criterion must agree with generate(stop_strings=...) at every length.
STOP_CASES = [
    ("The capital of France is Paris. It is known for the Eiffel Tower.", ["Paris."]),
    ("The weather today is sunny; tomorrow it rains.", ["ay is", "rains"]),
    ("one, two, three\n\nfour", ["\n\n"]),
    ("你好，世界！東京は晴れ", ["世界"]),
]
STREAM_TEXTS = ["Party time 🎉🎉! Wave 👋🏽 and a family 👨‍👩‍👧", "你好，世界！東京は今日晴れです。",
                "  two  spaces,\ttabs\nand   é, ñ  "]


def check_stopping(name: str, criteria_class, tokenizer) -> None:
    """The learner's StoppingCriteria class must decide like StopStringCriteria after every token of each case."""
    __tracebackhide__ = True  # noqa: F841
    for text, stops in STOP_CASES:
        ids = tokenizer(text, return_tensors="pt").input_ids
        yours, reference = criteria_class(tokenizer, stops), StopStringCriteria(tokenizer, stops)
        for end in range(1, ids.shape[1] + 1):
            mine = bool(torch.as_tensor(yours(ids[:, :end], None)).flatten()[0])
            theirs = bool(reference(ids[:, :end], None)[0])
            if mine != theirs:
                raise CheckFailed(
                    f"{name}: with stop strings {stops!r}, after the text {tokenizer.decode(ids[0, :end])!r} "
                    f"(last token {tokenizer.decode(ids[0, end - 1:end])!r}) yours says stop={mine}, stop_strings "
                    f"says {theirs}." + (" Hint: the stop string must end inside the newest token." if mine
                                         else " Hint: a stop string may begin in earlier tokens."))
    print(f"✔ {name}: same decision as stop_strings after every token of {len(STOP_CASES)} texts")


def check_stream_decoder(name: str, decoder_class, tokenizer) -> None:
    """push(id) never shows U+FFFD, and the pieces plus finish() equal tokenizer.decode, on emoji, CJK and spaces."""
    __tracebackhide__ = True  # noqa: F841
    for text in STREAM_TEXTS:
        ids = tokenizer(text).input_ids
        decoder = decoder_class(tokenizer)
        pieces = []
        for position, token_id in enumerate(ids):
            piece = decoder.push(token_id)
            if "\ufffd" in piece:
                raise CheckFailed(f"{name}: push of token {position} ({token_id}) of {text!r} showed {piece!r}, "
                                  "half a character. Hint: wait while the decoded text ends with '\\ufffd'.")
            pieces.append(piece)
        joined = "".join(pieces) + decoder.finish()
        problem = first_difference(joined, tokenizer.decode(ids))
        if problem:
            raise CheckFailed(f"{name}: on {text!r}, the pieces joined differ from tokenizer.decode: {problem}. "
                              "Hint: show only the text past what was already shown.")
    print(f"✔ {name}: no half character, and the same text as tokenizer.decode on {len(STREAM_TEXTS)} texts")


def check_allowed_sets(name: str, allowed_fn: Callable, processor, prefixes) -> None:
    """allowed_fn(state) must allow exactly the tokens the reference processor allows, after each prefix text."""
    __tracebackhide__ = True  # noqa: F841
    grammar = processor.grammar
    for prefix in prefixes:
        state = grammar.walk(grammar.start, prefix)
        yours = torch.as_tensor(allowed_fn(state)).bool()
        expected = processor.allowed(state)
        if yours.shape != expected.shape:
            raise CheckFailed(f"{name}: the mask has shape {tuple(yours.shape)}, expected {tuple(expected.shape)}.")
        wrong = torch.nonzero(yours != expected).flatten().tolist()
        if wrong:
            token_id = wrong[0]
            verb = "lets through" if yours[token_id] else "blocks"
            raise CheckFailed(
                f"{name}: after {prefix!r}, yours {verb} token {token_id} {processor.strings[token_id]!r}, which the "
                f"grammar {'forbids' if yours[token_id] else 'allows'} ({len(wrong)} tokens differ). Hint: walk the "
                "token's whole string, not only its first character.")
    print(f"✔ {name}: the same allowed tokens as the reference after {len(prefixes)} prefixes")


@torch.inference_mode()
def first_forbidden_token(model, tokenizer, processor, input_ids: torch.Tensor, max_new_tokens: int = 16) -> str:
    """The text of the first token of the unconstrained greedy reply that the grammar forbids ("" if none)."""
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                         do_sample=False)
    state = processor.grammar.start
    for token_id in out[0, input_ids.shape[1]:].tolist():
        if not processor.allowed(state)[token_id]:
            return processor.strings[token_id]
        state = processor.grammar.walk(state, processor.strings[token_id])
    return ""


def check_first_forbidden(name: str, answer: str, model, tokenizer, processor, input_ids) -> None:
    """The predicted text of the first token the constraint forbids, against the one computed."""
    __tracebackhide__ = True  # noqa: F841
    expected = first_forbidden_token(model, tokenizer, processor, input_ids)
    check(name, answer, expected, hint="print the unconstrained reply's tokens and walk them through the grammar")


def check_cached_processor(name: str, processor, reference_ids, generate_ids, distinct_states: int) -> None:
    """A cached processor gives the reference tokens and scans the vocabulary once per distinct grammar state."""
    __tracebackhide__ = True  # noqa: F841
    rows = [[int(t) for t in torch.as_tensor(row).flatten()] for row in generate_ids]
    check(f"{name}: tokens", rows, [[int(t) for t in torch.as_tensor(row).flatten()] for row in reference_ids])
    scans = getattr(processor, "scans", None)
    if not isinstance(scans, int):
        raise CheckFailed(f"{name}: the processor has no whole-number attribute `scans`. Hint: count the vocabulary "
                          "scans in allowed_for().")
    if scans > distinct_states:
        raise CheckFailed(f"{name}: {scans} vocabulary scans for {distinct_states} distinct grammar states. Hint: "
                          "look the state up in the cache before scanning.")
    print(f"✔ {name}: same tokens, {scans} scans for {distinct_states} distinct states")
