"""Checks for notebook 14: the byte table, pre-tokenizer, encoder, decoder and trainer written by hand.

Each compares the learner's function with the tokenizer itself (or with workshop_utils.bpe, which is
proven equal to it) on many inputs, and names the first input where they differ and how.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .core import CheckFailed, first_difference


def _tokens(ids, tokenizer) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(int(i)) for i in ids]


def _first_id_difference(answer, expected, tokenizer) -> str:
    for i, (x, y) in enumerate(zip(answer, expected)):
        if x != y:
            return (f"position {i} differs: you have {x} {_tokens([x], tokenizer)[0]!r}, expected {y} "
                    f"{_tokens([y], tokenizer)[0]!r} (tokens so far agree: {_tokens(expected[:i], tokenizer)[-4:]})")
    return f"you have {len(answer)} ids, expected {len(expected)} (expected tokens {_tokens(expected, tokenizer)})"


def _check_many(name: str, items, what: str) -> None:
    """texts (or id_lists) must be a list of several: one text alone would be checked character by character."""
    one = isinstance(items, str) or (what == "id_lists" and any(isinstance(i, int) for i in items))
    if one or not items:
        raise ValueError(f"{name}: {what} must be a non-empty list of {'texts' if what == 'texts' else 'lists of ids'}"
                         f", got {str(items)[:60]!r}. Fix: wrap a single one in a list: [{'text' if what == 'texts' else 'ids'}].")


def check_byte_table(name: str, table) -> None:
    """Compare a byte -> character table with GPT-2's, as transformers ships it; name the first wrong byte."""
    __tracebackhide__ = True  # noqa: F841
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    expected = bytes_to_unicode()
    if not isinstance(table, dict) or len(table) != 256:
        raise CheckFailed(f"{name}: expected a dict with 256 entries (one per byte), got {type(table).__name__} "
                          f"with {len(table) if hasattr(table, '__len__') else '?'} entries.")
    for b in range(256):
        if table.get(b) != expected[b]:
            kind = "printable, so it stands for itself" if expected[b] == chr(b) else (
                f"not printable, so it is shifted past 255 (it is non-printable byte number {ord(expected[b]) - 256})")
            raise CheckFailed(f"{name}: byte {b} maps to {table.get(b)!r}, expected {expected[b]!r}: byte {b} is {kind}.")
    print(f"✔ {name}")


def check_pre_tokenizer(name: str, pre_tokenize: Callable[[str], list[str]], tokenizer, texts: Sequence[str]) -> None:
    """Compare pre_tokenize(text) with the tokenizer's own pre-tokenizer on every text; show the first difference."""
    __tracebackhide__ = True  # noqa: F841
    _check_many(name, texts, "texts")
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    for n, text in enumerate(texts):
        expected = [piece for piece, _ in pre.pre_tokenize_str(text)]
        answer = pre_tokenize(text)
        problem = first_difference(answer, expected)
        if problem:
            raise CheckFailed(f"{name}: text {n} {text[:60]!r}: {problem}. Expected pieces {expected[:12]}.")
    print(f"✔ {name}: the same pieces on {len(texts)} texts")


def check_encoder(name: str, encode: Callable[[str], list[int]], tokenizer, texts: Sequence[str], *,
                  split_special_tokens: bool = False) -> None:
    """Compare encode(text) with tokenizer.encode(text, add_special_tokens=False) on every text."""
    __tracebackhide__ = True  # noqa: F841
    _check_many(name, texts, "texts")
    for n, text in enumerate(texts):
        expected = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=split_special_tokens)
        answer = [int(i) for i in encode(text)]
        if answer != expected:
            raise CheckFailed(f"{name}: text {n} {text[:60]!r}: {_first_id_difference(answer, expected, tokenizer)}.")
    print(f"✔ {name}: the same ids on {len(texts)} texts")


def check_decoder(name: str, decode: Callable[[list[int]], str], tokenizer, id_lists: Sequence[Sequence[int]]) -> None:
    """Compare decode(ids) with tokenizer.decode(ids) on every list of ids; show the first differing character."""
    __tracebackhide__ = True  # noqa: F841
    _check_many(name, id_lists, "id_lists")
    for n, ids in enumerate(id_lists):
        expected = tokenizer.decode(list(ids))
        answer = decode(list(ids))
        problem = first_difference(answer, expected)
        if problem:
            broken = isinstance(answer, str) and answer.count("\ufffd") > expected.count("\ufffd")
            hint = (" Hint: join the bytes of all tokens first, then decode once with errors='replace': a character "
                    "can be split across tokens.") if broken else ""
            raise CheckFailed(f"{name}: ids {n} {list(ids)[:8]}...: {problem}.{hint}")
    print(f"✔ {name}: the same text for {len(id_lists)} lists of ids")


def check_bpe_words(name: str, bpe: Callable[[str], list[str]], reference, words: Sequence[str]) -> None:
    """Compare bpe(word) with the reference ByteLevelBPE's merges of the same byte-level word."""
    __tracebackhide__ = True  # noqa: F841
    for word in words:
        expected, answer = reference.bpe(word), bpe(word)
        if answer != expected:
            raise CheckFailed(
                f"{name}: {word!r} becomes {answer}, expected {expected}. Among the pairs that have a merge, apply "
                "the one of lowest rank (learned first) each time, wherever it is and however often it occurs.")
    print(f"✔ {name}: the same tokens for {len(words)} words")


def check_merges(name: str, merges: Sequence[tuple[str, str]], expected: Sequence[tuple[str, str]]) -> None:
    """Compare a list of learned merges with the expected one; name the first merge that differs."""
    __tracebackhide__ = True  # noqa: F841
    answer = [tuple(m) for m in merges]
    for i, (x, y) in enumerate(zip(answer, expected)):
        if x != tuple(y):
            raise CheckFailed(f"{name}: merge {i} is {x}, expected {tuple(y)} (the {i} merges before it agree). "
                              "Pick the most frequent pair; on a tie, the pair whose ids are smaller.")
    if len(answer) != len(expected):
        raise CheckFailed(f"{name}: you learned {len(answer)} merges, expected {len(expected)}.")
    print(f"✔ {name}: the same {len(answer)} merges")


def check_trained(name: str, vocab: dict, merges, expected) -> None:
    """Compare a trained vocabulary (token -> id) and merges with a reference ByteLevelBPE trained alike.

    In order: the ids of the special tokens and bytes, then the merges, then the ids of the merged tokens.
    """
    __tracebackhide__ = True  # noqa: F841
    want = {**expected.vocab, **expected.added}
    start = sorted(want.items(), key=lambda item: item[1])
    n_base = len(expected.added) + 256
    for token, i in start[:n_base]:
        if vocab.get(token) != i:
            raise CheckFailed(f"{name}: token {token!r} has id {vocab.get(token)}, expected {i}. Special tokens come "
                              "first, then the 256 byte characters in code-point order.")
    answer = [tuple(m) for m in merges]
    for i, (x, y) in enumerate(zip(answer, expected.merges)):
        if x != y:
            raise CheckFailed(f"{name}: merge {i} is {x}, expected {y} (the {i} merges before it agree). Was the "
                              "special token's text counted? Cut the text at each special token before counting words.")
    if len(answer) != len(expected.merges):
        raise CheckFailed(f"{name}: you learned {len(answer)} merges, expected {len(expected.merges)}.")
    for token, i in start[n_base:]:
        if vocab.get(token) != i:
            raise CheckFailed(f"{name}: merged token {token!r} has id {vocab.get(token)}, expected {i}: each new "
                              "token takes the next free id.")
    extra = [t for t in vocab if t not in want]
    if extra:
        raise CheckFailed(f"{name}: token {extra[0]!r} should not be in the vocabulary.")
    print(f"✔ {name}: the same vocabulary of {len(want)} and {len(answer)} merges")


def check_predicted_tokens(name: str, answer, text: str, tokenizer) -> None:
    """Compare a predicted token count with the tokenizer's, and show the tokens either way."""
    __tracebackhide__ = True  # noqa: F841
    ids = tokenizer.encode(text, add_special_tokens=False)
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise CheckFailed(f"{name}: expected a whole number, got {type(answer).__name__}: {answer!r}.")
    if answer != len(ids):
        why = " No merge in this vocabulary joins two digits, or a space and a digit." if any(
            c.isdigit() for c in text) else ""
        raise CheckFailed(f"{name}: you predicted {answer}, the tokenizer makes {len(ids)}: {_tokens(ids, tokenizer)}.{why}")
    print(f"✔ {name}: {len(ids)} tokens, {_tokens(ids, tokenizer)}")
