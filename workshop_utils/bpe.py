"""Byte-level BPE by hand, the reference for notebook 14 (in the style of karpathy's minbpe).

Text becomes bytes, each byte a printable character (GPT-2's table: the space byte is `Ġ`); a
pre-tokenizer cuts the text into words; inside each word the pair with the lowest merge rank is merged,
again and again. `ByteLevelBPE.from_tokenizer(tokenizer)` reads the model's own table, pre-tokenizer,
merges and added tokens and encodes exactly as `tokenizer.encode(text, add_special_tokens=False)`;
`train(text, vocab_size)` learns merges the way the `tokenizers` library's `BpeTrainer` does.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass, field

import regex

from .tokens import token_id_rows

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, each with at most one space before.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte table: the 188 printable bytes stand for themselves, the other 68 for chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _isolate(piece: str, pattern: regex.Pattern) -> list[str]:
    """Cut piece so that every match of pattern is a piece of its own (tokenizers' "Isolated" behaviour)."""
    parts, at = [], 0
    for m in pattern.finditer(piece):
        parts += [piece[at:m.start()], m.group()]
        at = m.end()
    return [p for p in [*parts, piece[at:]] if p]


def _rules(spec: dict | None) -> list[tuple[str, object]]:
    """The pre-tokenizer of a tokenizer.json, as a list of ("isolate", pattern) and ("prefix_space", None) rules."""
    kind = (spec or {}).get("type")
    if kind == "Sequence":
        return [rule for inner in spec["pretokenizers"] for rule in _rules(inner)]
    if kind == "ByteLevel":
        return ([("prefix_space", None)] if spec.get("add_prefix_space") else []) + (
            [("isolate", regex.compile(GPT2_PATTERN))] if spec.get("use_regex", True) else [])
    if kind == "Digits":
        return [("isolate", regex.compile(r"\p{N}" if spec.get("individual_digits") else r"\p{N}+"))]  # Rust's is_numeric
    if kind == "Split" and spec.get("behavior") == "Isolated" and not spec.get("invert"):
        pattern = spec["pattern"]
        return [("isolate", regex.compile(pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"])))]
    raise ValueError(f"Pre-tokenizer {spec!r} is not handled by this small reference. Fix: use a byte-level BPE "
                     "tokenizer whose pre-tokenizer is ByteLevel, Digits, an isolating Split or a Sequence of them.")


@dataclass
class ByteLevelBPE:
    """A byte-level BPE tokenizer: vocabulary, ranked merges, added tokens and pre-tokenizer rules."""

    vocab: dict[str, int]             # token, written in byte characters ("Ġthe"), -> id
    merges: list[tuple[str, str]]     # merges[0] has rank 0 and is applied first
    added: dict[str, int] = field(default_factory=dict)   # matched in the raw text before anything else
    rules: list = field(default_factory=lambda: [("isolate", regex.compile(GPT2_PATTERN))])
    ignore_merges: bool = False       # a whole word found in the vocabulary is one token (Llama 3 does this)

    def __post_init__(self):
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.id_to_token = {i: t for t, i in {**self.vocab, **self.added}.items()}
        longest_first = sorted(self.added, key=len, reverse=True)
        self.added_pattern = regex.compile("(" + "|".join(map(regex.escape, longest_first)) + ")") if self.added else None
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ByteLevelBPE:
        """Read a byte-level BPE out of a transformers tokenizer (or a tokenizers.Tokenizer)."""
        spec = json.loads(getattr(tokenizer, "backend_tokenizer", tokenizer).to_str())
        model = spec["model"]
        unsupported = {"type": model.get("type") != "BPE", "normalizer": spec.get("normalizer") is not None,
                       "byte_fallback": model.get("byte_fallback"), "dropout": model.get("dropout"),
                       "continuing_subword_prefix": model.get("continuing_subword_prefix"),
                       "end_of_word_suffix": model.get("end_of_word_suffix"),
                       "decoder": (spec.get("decoder") or {}).get("type") != "ByteLevel"}
        unsupported.update({f"added token {t['content']!r}": t["lstrip"] or t["rstrip"] or t["single_word"]
                            for t in spec.get("added_tokens", [])})
        if any(unsupported.values()):
            what = [name for name, bad in unsupported.items() if bad]
            raise ValueError(f"This tokenizer is not plain byte-level BPE ({', '.join(what)}). Fix: use a tokenizer "
                             "with a BPE model, a ByteLevel decoder and no normalizer, such as SmolLM2's or GPT-2's.")
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
        return cls(vocab=model["vocab"], merges=merges, added={t["content"]: t["id"] for t in spec["added_tokens"]},
                   rules=_rules(spec.get("pre_tokenizer")), ignore_merges=bool(model.get("ignore_merges")))

    def pre_tokenize(self, text: str) -> list[str]:
        """Words of text in byte characters: the rules in order, each cutting every piece the previous one left."""
        pieces = [text]
        for kind, pattern in self.rules:
            if kind == "prefix_space":
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
            else:
                pieces = [part for p in pieces for part in _isolate(p, pattern)]
        return ["".join(BYTE_TO_CHAR[b] for b in p.encode("utf-8")) for p in pieces]

    def bpe(self, word: str) -> list[str]:
        """Merge one word's byte characters: the lowest-rank pair first, until no pair has a merge."""
        if self.ignore_merges and word in self.vocab:
            return [word]
        parts = [c for c in word if c in self.vocab]  # a byte missing from the vocabulary is dropped, as tokenizers does
        while len(parts) > 1:
            rank, i = min((self.ranks.get(pair, len(self.ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of text with no added-token pass: pre-tokenize, map bytes to characters, merge each word."""
        ids = []
        for word in self.pre_tokenize(text):
            if word not in self.cache:
                self.cache[word] = [self.vocab[t] for t in self.bpe(word)]
            ids += self.cache[word]
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of text, as tokenizer.encode(text, add_special_tokens=False): added tokens first, then BPE."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}. Fix: pass text, for example "
                            "bytes.decode('utf-8') first.")
        chunks = self.added_pattern.split(text) if self.added_pattern else [text]
        ids = []
        for i, chunk in enumerate(chunks):  # odd positions are the added tokens the pattern captured
            ids += [self.added[chunk]] if i % 2 else self.encode_ordinary(chunk) if chunk else []
        return ids

    def decode(self, ids) -> str:
        """Text of ids: each token's characters back to bytes (an added token as its UTF-8), then UTF-8."""
        ids = token_id_rows(ids, "ids", one_row=True, allow_empty=True)[0].tolist()
        bad = [i for i in ids if int(i) not in self.id_to_token]
        if bad:
            raise ValueError(f"Token id {bad[0]} is not in this vocabulary of {len(self.id_to_token)} tokens. Fix: "
                             "decode ids made by this same tokenizer.")
        tokens = [self.id_to_token[int(i)] for i in ids]
        data = b"".join(bytes(CHAR_TO_BYTE[c] for c in t) if all(c in CHAR_TO_BYTE for c in t) else t.encode()
                        for t in tokens)
        return data.decode("utf-8", errors="replace")


def train(text: str, vocab_size: int, special_tokens=(), *, pattern: str = GPT2_PATTERN) -> ByteLevelBPE:
    """Learn merges from text until the vocabulary (specials + 256 bytes + merges) has vocab_size tokens.

    As tokenizers' BpeTrainer does: the most frequent pair wins, a tie goes to the pair of smaller ids, and
    the ids are the special tokens, then the 256 byte characters in code-point order, then the merges.
    """
    if not isinstance(text, str):
        raise TypeError(f"train takes the corpus as a str, got {type(text).__name__}. Fix: read the file with "
                        "Path(...).read_text(encoding='utf-8').")
    if isinstance(special_tokens, str) or not all(isinstance(t, str) and t for t in special_tokens):
        raise ValueError(f"special_tokens must be a list of non-empty strings, got {special_tokens!r}. Fix: wrap one "
                         "token in a list: special_tokens=['<|endoftext|>'].")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be a whole number, got {vocab_size!r}. Fix: pass e.g. vocab_size=512.")
    if not text:
        raise ValueError("The corpus is empty, so there are no pairs to count. Fix: pass some text.")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} leaves no room for the 256 bytes and {len(special_tokens)} "
                         f"special tokens. Fix: ask for at least {256 + len(special_tokens)}.")
    vocab = {t: i for i, t in enumerate([*special_tokens, *sorted(BYTE_TO_CHAR.values())])}
    names = list(vocab)  # id -> token
    rules = [("isolate", regex.compile(pattern))]
    cut = regex.compile("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))))
    documents = cut.split(text) if special_tokens else [text]  # a special token is never counted, never split
    words = Counter("".join(BYTE_TO_CHAR[b] for b in w.encode("utf-8"))
                    for document in documents for w in _isolate(document, rules[0][1]))
    symbols, counts = [[vocab[c] for c in w] for w in words], list(words.values())
    pairs, where = Counter(), {}  # pair of ids -> count in the corpus, and the words that hold it
    for w, sym in enumerate(symbols):
        for pair in zip(sym, sym[1:]):
            pairs[pair] += counts[w]
            where.setdefault(pair, set()).add(w)
    heap = [(-n, pair) for pair, n in pairs.items()]  # most frequent first, then smaller ids
    heapq.heapify(heap)
    merges = []
    while heap and len(vocab) < vocab_size:
        n, pair = heapq.heappop(heap)
        if -n != pairs[pair]:  # a count that went down since it was pushed: push it again as it is now
            if pairs[pair] > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
            continue
        merges.append((names[pair[0]], names[pair[1]]))
        token = names[pair[0]] + names[pair[1]]
        if token not in vocab:  # two merges can spell the same token; it keeps its first id
            vocab[token] = len(names)
            names.append(token)
        new, grown = vocab[token], set()
        for w in where.pop(pair):
            old, sym, i = symbols[w], [], 0
            while i < len(old):  # merge left to right, as ByteLevelBPE.bpe does
                hit = old[i:i + 2] == list(pair)
                sym.append(new if hit else old[i])
                i += 2 if hit else 1
            for p in zip(old, old[1:]):
                pairs[p] -= counts[w]
            for p in zip(sym, sym[1:]):
                pairs[p] += counts[w]
                where.setdefault(p, set()).add(w)
            symbols[w] = sym
            grown |= {p for p in zip(sym, sym[1:]) if new in p}  # only pairs with the new token can grow
        for p in grown:
            heapq.heappush(heap, (-pairs[p], p))
    return ByteLevelBPE(vocab=vocab, merges=merges, added={t: vocab[t] for t in special_tokens}, rules=rules)
