"""Tokens made visible: coloured chips with ids, the chat template by role, a live token viewer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from .display import Rendered, WithFallback, escape

# Shown instead of the invisible characters, so that a space or a newline inside a token can be seen.
VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
# Light backgrounds that alternate from token to token, so that every boundary shows.
CHIP_COLOURS = ["#dbeafe", "#fde68a", "#bbf7d0", "#fbcfe8", "#ddd6fe"]
ROLE_COLOURS = {"system": ("#ede9fe", "#6d28d9"), "user": ("#dbeafe", "#1d4ed8"),
                "assistant": ("#dcfce7", "#15803d"), "other": ("#ffedd5", "#c2410c")}
DEFAULT_SYSTEM = "system (added by the template)"
GENERATION_PROMPT = "assistant (generation prompt)"


@dataclass
class Token:
    """One token as shown: its id, a visible label, and its kind ("text", "special" or "bytes")."""

    id: int
    label: str
    kind: str


def visible(text: str) -> str:
    """Text with spaces, newlines, tabs and other control characters replaced by visible marks."""
    return "".join(VISIBLE.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in text)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


def _as_id_tensor(ids, name: str) -> torch.Tensor:
    """What a learner passes as ids (list, tensor, array, tokenizer output) as a tensor; one message for the rest."""
    if isinstance(ids, str):
        raise ValueError(f"{name} is a string ({ids[:40]!r}), not token ids. Fix: tokenize it first: "
                         "tokenizer(text, return_tensors='pt').input_ids.")
    if isinstance(ids, Mapping):  # a BatchEncoding (or dict) from tokenizer(...)
        if "input_ids" not in ids:
            raise ValueError(f"{name} is a mapping without 'input_ids' (keys: {list(ids)}). Fix: pass "
                             "tokenizer(text, return_tensors='pt').input_ids.")
        mask = ids.get("attention_mask")
        if mask is not None and not bool(_as_id_tensor(mask, "attention_mask").all()):
            raise ValueError(f"{name} is a padded batch (its attention_mask has zeros), and the mask would be lost. "
                             "Fix: pass input_ids=enc.input_ids and attention_mask=enc.attention_mask.")
        ids = ids["input_ids"]
    try:
        return torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as error:
        ragged = "expected sequence of length" in str(error)
        raise ValueError((f"The rows of {name} have different lengths. Fix: pad them: tokenizer(texts, "
                          "padding=True, return_tensors='pt'), and pass its attention_mask too." if ragged else
                          f"{name} must be token ids, got {type(ids).__name__}. Fix: pass a list of ints, a 1-D or "
                          "2-D tensor, or tokenizer(text, return_tensors='pt') (its input_ids).")) from None


def token_id_rows(ids, name: str = "token ids", *, vocab_size: int | None = None, one_row: bool = False,
                  allow_empty: bool = False) -> torch.LongTensor:
    """Token ids as a LongTensor [rows, positions], checked: the package's one normaliser of ids.

    A list or a 1-D tensor is one row; a BatchEncoding gives its input_ids (refused when padded: the mask
    would be lost). ValueError, naming the fix, for floats, a shape that is no
    [rows, positions], no ids at all (unless allow_empty), ids outside 0 .. vocab_size - 1 (when given),
    or more than one row when one_row.
    """
    ids = _as_id_tensor(ids, name)
    rows = ids[None] if ids.dim() == 1 else ids
    if rows.dim() != 2 or (one_row and rows.shape[0] != 1):
        raise ValueError(f"Expected one sequence of token ids in {name}, got shape {tuple(ids.shape)}. Fix: pass one "
                         f"row (one prompt), for example {name}[0]; for a batch, loop over its rows."
                         if one_row else
                         f"{name} must be token ids of shape [batch, positions], got shape {tuple(ids.shape)}. "
                         "Fix: pass tokenizer(text, return_tensors='pt').input_ids.")
    if rows.shape[1] == 0:  # (an empty list is a float tensor: it has no ids to be wrong)
        if not allow_empty:
            raise ValueError(f"{name} is empty: there is no token to work on. Fix: pass at least one token id, "
                             "for example tokenizer('Once upon a time', return_tensors='pt').input_ids.")
        return rows.long()
    if rows.is_floating_point() or rows.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"Token ids must be integers, got {rows.dtype} values in {name}. Fix: pass input_ids, "
                         "not logits or probabilities.")
    if vocab_size is not None and rows.numel():
        outside = rows[(rows < 0) | (rows >= vocab_size)]
        if outside.numel():
            raise ValueError(f"Token id {int(outside[0])} is outside this tokenizer's vocabulary (ids 0 to "
                             f"{vocab_size - 1}), in {name}. Fix: pass ids made by this model's own tokenizer.")
    return rows.long()


def check_tokenizer(tokenizer) -> None:
    """Refuse what is not a tokenizer (None, a model, the (model, tokenizer) pair) before any work."""
    if not (callable(getattr(tokenizer, "decode", None)) and callable(getattr(tokenizer, "convert_ids_to_tokens", None))):
        raise TypeError(f"Expected a tokenizer, got {type(tokenizer).__name__}. Fix: pass the tokenizer from "
                        "model, tokenizer = load_model().")


def as_token_ids(tokenizer, text_or_ids: str | Sequence[int] | torch.Tensor) -> list[int]:
    """Token ids of a text (as tokenizer(text) gives them) or checked ids of one sequence; ValueError on bad input."""
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise ValueError("The text is empty, so there are no tokens to show. Fix: pass at least one character.")
        return list(tokenizer(text_or_ids).input_ids)
    return token_id_rows(text_or_ids, vocab_size=len(tokenizer), one_row=True)[0].tolist()


def describe_tokens(tokenizer, text_or_ids) -> list[Token]:
    """Each token's id, visible label and kind; a byte-level piece that is no whole character shows its bytes."""
    ids = as_token_ids(tokenizer, text_or_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    pieces = tokenizer.convert_ids_to_tokens(ids)
    byte_level = _is_byte_level(tokenizer)
    tokens = []
    for token_id, piece in zip(ids, pieces):
        if token_id in added and added[token_id].special:
            tokens.append(Token(token_id, added[token_id].content, "special"))
            continue
        if byte_level and all(c in _byte_decoder() for c in piece):
            raw = bytes(_byte_decoder()[c] for c in piece)
            try:
                tokens.append(Token(token_id, visible(raw.decode("utf-8")), "text"))
            except UnicodeDecodeError:  # part of a character that other tokens complete
                tokens.append(Token(token_id, "«" + " ".join(f"{b:02x}" for b in raw) + "»", "bytes"))
            continue
        text = tokenizer.decode([token_id])
        whole = "\ufffd" not in text
        tokens.append(Token(token_id, visible(text) if whole else piece, "text" if whole else "bytes"))
    return tokens


def _chip_html(token: Token, background: str, strong: str) -> str:
    if token.kind == "special":
        style = f"background:{strong};color:white;font-weight:bold"
    elif token.kind == "bytes":
        style = f"background:{background};border:1px dashed {strong}"
    else:
        style = f"background:{background}"
    return (f"<span title='id {token.id}' style='display:inline-flex;flex-direction:column;align-items:center;"
            f"margin:1px;padding:0 3px;border-radius:3px;{style}'><span style='white-space:pre'>{escape(token.label)}"
            f"</span><span style='font-size:0.7em;opacity:0.7'>{token.id}</span></span>")


def _chips(tokens: list[Token], colours: list[tuple[str, str]]) -> tuple[str, str]:
    """HTML chips and their text form; a new line starts after each newline token."""
    html_parts, text_parts, line = [], [], []
    for token, (background, strong) in zip(tokens, colours):
        html_parts.append(_chip_html(token, background, strong))
        line.append(f"[{token.label} {token.id}]")
        if token.label.endswith("↵"):
            html_parts.append("<br>")
            text_parts.append(" ".join(line))
            line = []
    if line:
        text_parts.append(" ".join(line))
    html_text = "".join(html_parts)
    return f"<div style='font-family:monospace;line-height:1.9'>{html_text}</div>", "\n".join(text_parts)


def _summary(tokens: list[Token]) -> str:
    special = sum(t.kind == "special" for t in tokens)
    return f"{len(tokens)} tokens" + (f", {special} special" if special else "")


def show_tokens(tokenizer, text_or_ids) -> Rendered:
    """Coloured token chips with their ids; spaces (·), newlines (↵) and special tokens are visible."""
    tokens = describe_tokens(tokenizer, text_or_ids)
    colours = [(CHIP_COLOURS[i % len(CHIP_COLOURS)], "#374151") for i in range(len(tokens))]
    chips_html, chips_text = _chips(tokens, colours)
    summary = _summary(tokens)
    return Rendered(f"<div><div style='font-size:0.85em;color:#555'>{summary}</div>{chips_html}</div>",
                    f"{summary}\n{chips_text}")


ROLES = ("system", "user", "assistant", "tool")  # the roles of the usual chat message format


def check_messages(messages) -> None:
    """Raise ValueError, naming the fix, unless messages is a non-empty list of {'role': str, 'content': str}
    with roles from ROLES."""
    if isinstance(messages, str):
        raise ValueError(f"The conversation is a string, not a list of messages: pass "
                         f"[{{'role': 'user', 'content': {messages!r}}}].")
    if isinstance(messages, Mapping):
        raise ValueError("Got one message where a conversation (a list of messages) was expected. Fix: wrap it in a "
                         "list. (chat_turn takes one conversation; chat_replies takes a list of conversations.)")
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("The conversation is empty: pass a list of messages, for example "
                         "[{'role': 'user', 'content': 'What is 2 + 3?'}].")
    for i, message in enumerate(messages):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"Message {i} is {message!r}. Fix: each message must be a dict with a string 'role' "
                             "and a string 'content', for example {'role': 'user', 'content': 'Hi'}.")
        if message["role"] not in ROLES:
            raise ValueError(f"Message {i} has the role {message['role']!r}, which chat templates do not know: "
                             f"use one of {', '.join(map(repr, ROLES))}.")  # (the wording notebook 05 stores)


def _render(tokenizer, messages, **template_kwargs):
    """apply_chat_template, with the template's own refusals turned into a ValueError that says why."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **template_kwargs)
    except TemplateError as error:
        raise ValueError(f"The chat template rejects this conversation: {error}. Fix: change the roles to what "
                         "this template accepts (some templates want user and assistant to alternate, or "
                         "have no system role: put the system text into the first user message).") from error


def _default_system_length(tokenizer, first: dict) -> int:
    """How many characters the template writes before the first message when it adds a system prompt itself."""
    if first["role"] == "system":
        return 0
    system = {"role": "system", "content": "x"}
    try:
        with_first = _render(tokenizer, [system, first], tokenize=False)
        own = len(with_first) - len(_render(tokenizer, [system], tokenize=False))
    except ValueError:  # a template that refuses system messages adds none either
        return 0
    return max(len(_render(tokenizer, [first], tokenize=False)) - own, 0)


def chat_segments(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[tuple[str, str]]:
    """The rendered chat cut into (role, text) pieces: one per message, plus what the template adds."""
    check_messages(messages)
    segments, done = [], ""
    for i in range(len(messages)):
        text = _render(tokenizer, list(messages[: i + 1]), tokenize=False)
        if not text.startswith(done):
            raise ValueError("This chat template rewrites earlier turns when a turn is added, so turns cannot be "
                             "coloured one by one. Fix: use show_tokens on the rendered text instead.")
        piece = text[len(done):]
        if i == 0 and (cut := _default_system_length(tokenizer, messages[0])):
            segments.append((DEFAULT_SYSTEM, piece[:cut]))
            piece = piece[cut:]
        segments.append((messages[i]["role"], piece))
        done = text
    if add_generation_prompt:
        segments.append((GENERATION_PROMPT, _render(tokenizer, list(messages), tokenize=False,
                                                    add_generation_prompt=True)[len(done):]))
    return [(role, text) for role, text in segments if text]


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> Rendered:
    """The chat template's text, tokenized, with every token coloured by the role it belongs to."""
    segments = chat_segments(tokenizer, messages, add_generation_prompt)
    text = "".join(t for _, t in segments)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = describe_tokens(tokenizer, encoding.input_ids)
    bounds, end = [], 0
    for role, piece in segments:
        end += len(piece)
        bounds.append((end, role))
    roles = [next(role for stop, role in bounds if start < stop) for start, _ in encoding.offset_mapping]

    def colour(role: str) -> tuple[str, str]:
        return ROLE_COLOURS.get(role.split(" ")[0], ROLE_COLOURS["other"])

    blocks_html, blocks_text = [], []
    i = 0
    while i < len(tokens):  # consecutive tokens of one role form a block
        j = i
        while j < len(tokens) and roles[j] == roles[i]:
            j += 1
        role = roles[i]
        chips_html, chips_text = _chips(tokens[i:j], [colour(role)] * (j - i))
        background, strong = colour(role)
        blocks_html.append(f"<div style='margin:4px 0'><div style='font-size:0.8em;color:{strong};font-weight:bold'>"
                           f"{escape(role)} · {j - i} tokens</div>{chips_html}</div>")
        blocks_text.append(f"--- {role} · {j - i} tokens\n{chips_text}")
        i = j
    summary = _summary(tokens)
    return Rendered(f"<div><div style='font-size:0.85em;color:#555'>{summary}</div>{''.join(blocks_html)}</div>",
                    f"{summary}\n" + "\n".join(blocks_text))


def token_viewer(tokenizer, text: str = "Hello world! Tokens are not words.") -> WithFallback:
    """Type text, see its tokens live (a textarea over token chips); the stored output is a snapshot."""
    import ipywidgets as widgets

    box = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%", height="4em"))
    box.add_class("wu-token-input")
    view = widgets.HTML().add_class("wu-token-view")

    def update(value: str) -> None:
        view.value = show_tokens(tokenizer, value).html if value else "<i>(type some text)</i>"

    box.observe(lambda change: update(change["new"]), names="value")
    update(text)
    shown = show_tokens(tokenizer, text) if text else Rendered("<i>(type some text)</i>", "(type some text)")
    note = "[static picture: run the notebook to type your own text]"
    snapshot = Rendered(f"<p>{note} text = {escape(repr(text))}</p>{shown.html}", f"{note} text = {text!r}\n{shown.text}")
    return WithFallback(widgets.VBox([box, view]), snapshot)
