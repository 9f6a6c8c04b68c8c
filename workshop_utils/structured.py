"""JSON that a grammar guarantees: constrained decoding by a LogitsProcessor (notebook 13, section 3).

- JsonSchemaLogitsProcessor: a LogitsProcessor that lets through only tokens that keep the output a
  prefix of a JSON object of a small schema (required string, integer, boolean and enum fields), in
  json.dumps's layout: {"name": "Ada", "age": 36}. The grammar is a list of pieces read one
  character at a time (JsonGrammar). A token is allowed when its whole string walks the grammar, so a
  token such as '",' may close a string and start the next key. Checking 49,152 strings per step in
  Python is slow, so the per-token data (strings, a trie, runs of plain string characters) is built
  once, and the allowed set is computed once per grammar state and cached: a later step only walks
  the chosen token and looks a mask up.
- LLGuidanceLogitsProcessor wraps llguidance (the chosen library, extra [structured]) in the same
  shape for comparison. llguidance.torch applies its bitmask with a torch.compile'd kernel whose first
  call compiles (tens of seconds on a laptop); this processor unpacks the bitmask with plain torch
  operations instead, so nothing is compiled.
- The measurement: valid-JSON rate and tokens per second, unconstrained against constrained.

The notebook's other two ideas have their own modules: stopping.py (StopOnText) and streaming.py
(IncrementalDecoder, ChatView); both names are imported here too, as the issue's public face.

    python -m workshop_utils.structured --prompts 20   # the full valid-JSON measurement, with a progress bar
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import time
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from .stopping import StopOnText  # noqa: F401  (the issue's public face: structured.StopOnText)
from .streaming import IncrementalDecoder  # noqa: F401  (and structured.IncrementalDecoder)
from .tokens import check_tokenizer

SUPPORTED = ('an object {"type": "object", "properties": {...}, "required": [every property]} whose properties '
             'are {"type": "string"} (optionally "maxLength": n or "format": "date"), {"type": "integer"}, '
             '{"type": "boolean"} or {"enum": ["a", "b", ...]} (strings)')
MAX_INTEGER_DIGITS = 15  # an integer field stops after 15 digits, so that every output can end
DATE = "dddd-dd-dd"  # "format": "date": four digits, a dash, two digits, a dash, two digits
DONE = "done"  # the grammar state after the closing brace: only an end-of-sequence token may follow


# --- the grammar ----------------------------------------------------------------------------------

def _refuse(what: str) -> ValueError:
    return ValueError(f"{what}. Supported: {SUPPORTED}. Fix: rewrite the schema within this subset.")


def _value_piece(name: str, spec) -> tuple:
    if not isinstance(spec, dict):
        raise _refuse(f"property {name!r} is {spec!r}, not a schema object")
    if "enum" in spec:
        options = spec["enum"]
        if (set(spec) - {"enum", "type"} or spec.get("type", "string") != "string" or not isinstance(options, list)
                or not options or not all(isinstance(o, str) for o in options)):
            raise _refuse(f"property {name!r} has an enum other than a non-empty list of strings: {spec!r}")
        return ("choice", tuple(json.dumps(o) for o in options))
    kind = spec.get("type")
    if kind == "string":
        extra = set(spec) - {"type", "maxLength", "format"}
        if extra:
            raise _refuse(f"property {name!r} uses {sorted(extra)}, which this grammar does not handle")
        if "format" in spec:
            if spec["format"] != "date" or "maxLength" in spec:
                raise _refuse(f"property {name!r} has format {spec['format']!r}; only \"date\" (alone) is supported")
            return ("date", None)
        limit = spec.get("maxLength")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise _refuse(f"property {name!r} has maxLength {limit!r}, not a whole number >= 1")
        return ("string", limit)
    if kind in ("integer", "boolean") and set(spec) == {"type"}:
        return ("integer", None) if kind == "integer" else ("choice", ("true", "false"))
    raise _refuse(f"property {name!r} is {json.dumps(spec)}")


class JsonGrammar:
    """The JSON texts of a schema, read one character at a time.

    The grammar is a list of pieces: fixed text ('{"name": '), then a value ("string", "integer",
    "date" or a "choice" of fixed words), then fixed text (', "age": '), ... then '}'. A state is
    (piece index, position inside the piece); step(state, ch) gives the next state, or None when ch
    cannot come next. The layout is json.dumps's: one space after ':' and after ','.
    """

    def __init__(self, schema):
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _refuse(f"the schema must be an object schema, got {str(schema)[:80]!r}")
        extra = set(schema) - {"type", "properties", "required", "additionalProperties", "title", "description"}
        properties = schema.get("properties")
        if extra or not isinstance(properties, dict) or not properties:
            raise _refuse(f"the schema uses {sorted(extra)}" if extra else "the schema has no properties")
        if schema.get("additionalProperties", False) is not False:
            raise _refuse("additionalProperties must be false (or absent)")
        if sorted(schema.get("required", [])) != sorted(properties):
            missing = sorted(set(properties) - set(schema.get("required", [])))
            raise _refuse(f"every property must be required; not required: {missing}")
        self.pieces: list[tuple] = []
        for i, (name, spec) in enumerate(properties.items()):
            self.pieces.append(("text", ("{" if i == 0 else ", ") + json.dumps(name) + ": "))
            self.pieces.append(_value_piece(name, spec))
        self.pieces.append(("text", "}"))
        self.start = self._begin(0)

    def _begin(self, i: int):
        if i == len(self.pieces):
            return DONE
        kind = self.pieces[i][0]
        return (i, {"text": 0, "string": "open", "integer": "start", "date": 0, "choice": ""}[kind])

    def step(self, state, ch: str):
        """The state after reading ch, or None if ch cannot come next."""
        if state == DONE:
            return None
        i, at = state
        kind, arg = self.pieces[i]
        if kind == "text":
            if arg[at] != ch:
                return None
            return (i, at + 1) if at + 1 < len(arg) else self._begin(i + 1)
        if kind == "choice":
            typed = at + ch
            if typed in arg:
                return self._begin(i + 1)
            return (i, typed) if any(option.startswith(typed) for option in arg) else None
        if kind == "integer":
            if at in ("start", "minus"):
                if ch == "-" and at == "start":
                    return (i, "minus")
                return (i, "zero") if ch == "0" else (i, 1) if ch in "123456789" else None
            if at != "zero" and ch in "0123456789" and at < MAX_INTEGER_DIGITS:
                return (i, at + 1)
            return self.step(self._begin(i + 1), ch)  # the number is over: ch belongs to what follows
        if kind == "date":
            template = '"' + DATE + '"'
            ok = ch in "0123456789" if template[at] == "d" else ch == template[at]
            return None if not ok else (i, at + 1) if at + 1 < len(template) else self._begin(i + 1)
        return self._step_string(i, at, arg, ch)

    def _step_string(self, i: int, at, limit: int | None, ch: str):
        if at == "open":
            return (i, (0, "")) if ch == '"' else None
        count, escape = at
        if escape == "":
            if ch == '"':
                return self._begin(i + 1)
            if ch == "\\":  # an escape is one more character: only if there is room for it
                return (i, (count, "\\")) if limit is None or count < limit else None
            if ord(ch) < 0x20:
                return None  # JSON strings hold no raw control characters
        elif escape == "\\":
            if ch == "u":
                return (i, (count, "u"))
            if ch not in '"\\/bfnrt':
                return None
        else:  # \u followed by four hex digits
            if ch not in string.hexdigits:
                return None
            if len(escape) < 4:
                return (i, (count, escape + "u"))
        count += 1  # one more character of the decoded string
        return (i, (count, "")) if limit is None or count <= limit else None

    def walk(self, state, text: str):
        """The state after reading all of text, or None if some character cannot come."""
        for ch in text:
            state = self.step(state, ch)
            if state is None:
                return None
        return state

    def string_room(self, state) -> float | None:
        """Inside a string body (no escape pending): how many more characters fit; else None."""
        if state == DONE:
            return None
        i, at = state
        kind, limit = self.pieces[i]
        if kind != "string" or not isinstance(at, tuple) or at[1] != "":
            return None
        return float("inf") if limit is None else limit - at[0]


# --- the constrained-decoding processor -----------------------------------------------------------

def token_strings(tokenizer) -> list[str]:
    """Each token id's text, decoded alone (special tokens and pieces of a character included as decoded)."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


def _plain(ch: str) -> bool:
    return ch not in '"\\' and ord(ch) >= 0x20


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Only tokens that keep the text a prefix of a JSON object of `schema` (then end-of-sequence) get through.

    Per-token data is built once here (about a second): each token's string, a trie of them, and for
    string bodies the length of each token's leading run of plain characters. Allowed sets are cached
    per grammar state. Tokens that are part of a character (their text holds U+FFFD) and special
    tokens are never allowed, so the output decodes token by token.
    """

    def __init__(self, tokenizer, schema, *, eos_token_id: int | Sequence[int] | None = None):
        check_tokenizer(tokenizer)
        self.grammar = JsonGrammar(schema)
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("The tokenizer has no eos_token_id, so a finished object cannot end the output. "
                             "Fix: pass eos_token_id=... .")
        self.eos = [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
        started = time.perf_counter()
        self.strings = token_strings(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", []))
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        usable = [i not in special and s != "" and "\ufffd" not in s for i, s in enumerate(self.strings)]
        self.usable = torch.tensor(usable)
        self.trie: list = [{}, []]  # node = [children by character, ids of the tokens that end here]
        runs, lengths = [], []
        for token_id, text in enumerate(self.strings):
            run = next((k for k, ch in enumerate(text) if not _plain(ch)), len(text))
            runs.append(run)
            lengths.append(len(text))
            if usable[token_id]:
                node = self.trie
                for ch in text:
                    node = node[0].setdefault(ch, [{}, []])
                node[1].append(token_id)
        self.plain_run, self.length = torch.tensor(runs), torch.tensor(lengths)
        self.all_plain = self.usable & (self.plain_run == self.length)
        self.not_plain = torch.nonzero(self.usable & ~self.all_plain).flatten().tolist()
        self.setup_seconds = time.perf_counter() - started
        self.masks: dict = {}  # grammar state -> bool tensor over the vocabulary
        self.steps = 0
        self.step_seconds = 0.0  # time spent in __call__, cached-mask steps and new states together
        self.new_state_seconds = 0.0  # of which: computing the allowed set of a state seen for the first time
        self._states: list | None = None
        self._prompt: torch.Tensor | None = None

    def allowed(self, state) -> torch.Tensor:
        """A bool tensor over the vocabulary: True where the token's whole string can come next."""
        if state not in self.masks:
            started = time.perf_counter()
            mask = torch.zeros(len(self.strings), dtype=torch.bool)
            if state == DONE:
                mask[self.eos] = True
            elif (room := self.grammar.string_room(state)) is not None:
                # Inside a string: all-plain tokens that fit, plus the few others that walk the grammar.
                mask |= self.all_plain & (self.length <= room)
                for token_id in self.not_plain:
                    if self.plain_run[token_id] <= room and self.grammar.walk(state, self.strings[token_id]):
                        mask[token_id] = True
            else:
                mask[self._trie_walk(self.trie, state, [])] = True
            self.masks[state] = mask
            self.new_state_seconds += time.perf_counter() - started
        return self.masks[state]

    def _trie_walk(self, node, state, found: list[int]) -> list[int]:
        for ch, child in node[0].items():
            after = self.grammar.step(state, ch)
            if after is not None:
                found.extend(child[1])
                if after != DONE:
                    self._trie_walk(child, after, found)
        return found

    def _advance(self, state, token_id: int):
        if state == DONE:
            return DONE  # after the end (a finished row is padded): stay done
        after = self.grammar.walk(state, self.strings[token_id]) if self.usable[token_id] else None
        if after is None:
            raise RuntimeError(f"Token {token_id} {self.strings[token_id]!r} does not fit the grammar here: another "
                               "processor or the sampler picked a masked token. Fix: put this processor last.")
        return after

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = time.perf_counter()
        new_call = (self._states is None or len(self._states) != input_ids.shape[0]
                    or input_ids.shape[1] != self._length_seen + 1
                    or not torch.equal(input_ids[:, :self._prompt.shape[1]], self._prompt))
        if new_call:  # a new generate() call: every row starts at the start of the grammar
            self._prompt = input_ids.clone()
            self._states = [self.grammar.start] * input_ids.shape[0]
        else:
            self._states = [self._advance(s, int(t)) for s, t in zip(self._states, input_ids[:, -1])]
        self._length_seen = input_ids.shape[1]
        mask = torch.stack([self.allowed(s) for s in self._states]).to(scores.device)
        if mask.shape[1] < scores.shape[1]:  # the model's vocabulary may be padded past the tokenizer's
            mask = torch.nn.functional.pad(mask, (0, scores.shape[1] - mask.shape[1]))
        self.steps += 1
        self.step_seconds += time.perf_counter() - started
        return scores.masked_fill(~mask, float("-inf"))


# --- the library --------------------------------------------------------------------------------

# llguidance builds the grammar itself; these options give it json.dumps's layout, as JsonGrammar has.
LLGUIDANCE_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# What each library did here, on CPU, with a string, an integer and an enum field and 3 prompts (issue 22).
LIBRARY_NOTES = [
    ("llguidance 1.9.1", "7 MB", "3 of 3 valid", "no transformers processor: LLGuidanceLogitsProcessor is 20 lines"),
    ("outlines 1.3.3", "32 MB", "3 of 3 valid", "get_json_schema_logits_processor(...) plugs into generate"),
    ("xgrammar 0.2.9", "1,015 MB", "3 of 3 valid", "pulls triton: too heavy for a laptop kit"),
    ("lm-format-enforcer 0.11.3", "-", "fails to import",
     "cannot import name 'PreTrainedTokenizerBase' from 'transformers.tokenization_utils' (transformers 5)"),
]


def llguidance_available() -> bool:
    """True when llguidance (pip install -e .[structured]) can be imported."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


class LLGuidanceLogitsProcessor(LogitsProcessor):
    """The same constraint from llguidance: one matcher per row computes a bitmask of the allowed tokens."""

    def __init__(self, tokenizer, schema):
        try:
            import llguidance
            import llguidance.hf
        except ImportError as error:
            raise ImportError("llguidance is not installed. Fix: pip install -e '.[structured]'.") from error
        check_tokenizer(tokenizer)
        JsonGrammar(schema)  # the same subset as JsonSchemaLogitsProcessor, refused the same way
        self._llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=LLGUIDANCE_LAYOUT)
        self.matchers = None
        self.steps, self.step_seconds = 0, 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = time.perf_counter()
        if self.matchers is None or len(self.matchers) != input_ids.shape[0] or input_ids.shape[1] != self._length_seen + 1:
            self.matchers = [self._llguidance.LLMatcher(self.tokenizer, self.grammar) for _ in input_ids]
        else:
            for matcher, token_id in zip(self.matchers, input_ids[:, -1].tolist()):
                if not matcher.is_stopped() and not matcher.consume_token(token_id):
                    raise RuntimeError(f"llguidance refused token {token_id}: {matcher.get_error()}")
        self._length_seen = input_ids.shape[1]
        words = torch.stack([torch.frombuffer(bytearray(m.compute_bitmask()), dtype=torch.int32) for m in self.matchers])
        # Unpack 32 bits per word with plain torch operations (llguidance.torch's kernel is torch.compile'd).
        allowed = ((words[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).flatten(1).bool()
        allowed = allowed[:, :scores.shape[1]]
        if allowed.shape[1] < scores.shape[1]:
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[1] - allowed.shape[1]))
        self.steps += 1
        self.step_seconds += time.perf_counter() - started
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


# --- the measurement ------------------------------------------------------------------------------

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "neutral"]},
    },
    "required": ["name", "age", "mood"],
}

PEOPLE = ["Ada, a 36-year-old mathematician, smiling", "Bob, 52, a tired farmer", "Chen, a cheerful 8-year-old",
          "Dana, 29, who just lost her keys", "Eli, a calm 71-year-old gardener", "Fatima, 44, laughing at a joke",
          "Goran, 19, bored in a lecture", "Hana, a 63-year-old retired nurse", "Ivan, 35, crying at a film",
          "Jun, 27, quietly reading", "Kofi, 58, proud of his garden", "Lena, 12, excited about her birthday",
          "Marco, 40, stuck in traffic", "Nia, 23, dancing", "Omar, 67, waiting for a bus",
          "Priya, 31, who won a prize", "Quinn, 15, grumpy in the morning", "Rosa, 85, telling stories",
          "Sam, 48, neither happy nor sad", "Tara, 9, with a new puppy"]


def person_prompts(tokenizer, people: Sequence[str]) -> dict:
    """Chat prompts asking for each person as JSON with name, age and mood, left-padded into one batch."""
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Describe this person as JSON with keys name, age and mood "
                                     f"(happy, sad or neutral): {person}."}],
        add_generation_prompt=True, tokenize=False) for person in people]
    return tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")


def is_valid(text: str, schema) -> bool:
    """True when text is one JSON object with exactly the schema's keys, each of its type."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict) or set(value) != set(schema["properties"]):
        return False
    for key, spec in schema["properties"].items():
        item = value[key]
        if "enum" in spec:
            ok = item in spec["enum"]
        elif spec["type"] == "integer":
            ok = isinstance(item, int) and not isinstance(item, bool)
        elif spec["type"] == "boolean":
            ok = isinstance(item, bool)
        elif spec.get("format") == "date":
            ok = isinstance(item, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", item) is not None
        else:
            ok = isinstance(item, str) and len(item) <= spec.get("maxLength", len(item))
        if not ok:
            return False
    return True


@torch.inference_mode()
def generate_replies(model, tokenizer, batch, max_new_tokens: int, processor=None) -> tuple[list[str], int, float]:
    """Greedy generate for a batch (with the processor, if any): the replies, the tokens generated, the seconds."""
    started = time.perf_counter()
    out = model.generate(**batch.to(model.device), max_new_tokens=max_new_tokens, do_sample=False,
                         logits_processor=[processor] if processor is not None else None)
    seconds = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1]:]
    pad = model.generation_config.pad_token_id
    # A row that ended early is padded; its end-of-sequence token counts, the padding after it does not.
    tokens = sum(min(int((row != pad).sum()) + 1, row.shape[0]) if pad is not None else row.shape[0] for row in new)
    return tokenizer.batch_decode(new, skip_special_tokens=True), tokens, seconds


def measure_json(model, tokenizer, people: Sequence[str] = PEOPLE, *, schema=PERSON_SCHEMA,
                 max_new_tokens: int = 32, processor: JsonSchemaLogitsProcessor | None = None,
                 batch_size: int = 10) -> dict:
    """Unconstrained against constrained replies for each person, in batches: replies, valid counts, tokens/s."""
    from .display import progress

    processor = processor or JsonSchemaLogitsProcessor(tokenizer, schema)
    result = {"people": list(people), "free": [], "constrained": [], "free_tokens": 0, "constrained_tokens": 0,
              "free_seconds": 0.0, "constrained_seconds": 0.0}
    chunks = [people[i:i + batch_size] for i in range(0, len(people), batch_size)]
    for chunk in progress(chunks, desc="batches"):
        batch = person_prompts(tokenizer, chunk)
        for kind, proc in (("free", None), ("constrained", processor)):
            replies, tokens, seconds = generate_replies(model, tokenizer, batch, max_new_tokens, proc)
            result[kind] += replies
            result[f"{kind}_tokens"] += tokens
            result[f"{kind}_seconds"] += seconds
    for kind in ("free", "constrained"):
        result[f"{kind}_valid"] = sum(is_valid(reply, schema) for reply in result[kind])
        result[f"{kind}_tokens_per_s"] = result[f"{kind}_tokens"] / max(result[f"{kind}_seconds"], 1e-9)
    return result


def main(argv: list[str] | None = None) -> int:
    """python -m workshop_utils.structured: the valid-JSON measurement over many prompts, on the default model."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.structured", description=main.__doc__)
    parser.add_argument("--prompts", type=int, default=len(PEOPLE), help=f"how many people (1 to {len(PEOPLE)})")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(PEOPLE):
        parser.error(f"--prompts must be from 1 to {len(PEOPLE)}")
    from . import load_model, setup_notebook

    setup_notebook(seed=0)
    model, tokenizer = load_model(device="cpu")
    result = measure_json(model, tokenizer, PEOPLE[:args.prompts], max_new_tokens=args.max_new_tokens)
    for free, constrained in zip(result["free"], result["constrained"]):
        print(f"{'ok ' if is_valid(free, PERSON_SCHEMA) else 'bad'} {free[:70]!r}\n"
              f"{'ok ' if is_valid(constrained, PERSON_SCHEMA) else 'bad'} {constrained!r}")
    n = len(result["people"])
    print(f"valid JSON: unconstrained {result['free_valid']}/{n}, constrained {result['constrained_valid']}/{n}")
    print(f"tokens/s: unconstrained {result['free_tokens_per_s']:.1f}, "
          f"constrained {result['constrained_tokens_per_s']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
