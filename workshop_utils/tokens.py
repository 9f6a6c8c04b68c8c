"""Tokens made visible (provisional: only render_chat, to be replaced by notebook 01's module)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .display import Rendered, escape

_ROLE_COLOURS = {"system": "#e8e0f4", "user": "#dbeafe", "assistant": "#dcfce7", "tool": "#fef3c7"}


def _visible(token_text: str) -> str:
    return token_text.replace(" ", "·").replace("\n", "↵")


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> Rendered:
    """The templated conversation as tokens, each coloured by the role of the message it belongs to."""
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Each message owns the characters its render adds to the render of the messages before it.
    ends = [len(tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)) for i in range(len(messages))]
    roles = [m["role"] for m in messages] + ["assistant"]  # the generation prompt opens the assistant's turn
    # A block the template writes before the first message (a default system prompt): the first segment
    # minus what the same message renders to when it comes later in a conversation.
    first, reply = messages[0], {"role": "assistant", "content": "x"}
    try:
        block = tokenizer.apply_chat_template([first, reply, first], tokenize=False)[
            len(tokenizer.apply_chat_template([first, reply], tokenize=False)):]
    except Exception:  # a template that refuses this order has no such block to find
        block = ""
    if first["role"] != "system" and block and text[:ends[0]].endswith(block) and len(block) < ends[0]:
        ends.insert(0, ends[0] - len(block))
        roles.insert(0, "system")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    chips, lines, current = [], [], None
    for token_id, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        role = roles[next((i for i, end in enumerate(ends) if start < end), len(ends))]
        shown = _visible(tokenizer.decode([token_id]))
        weight = "bold" if token_id in special else "normal"
        chips.append(f"<span title='{escape(role)} · id {token_id}' style='background:{_ROLE_COLOURS.get(role, '#eee')};"
                     f"font-weight:{weight};padding:1px 2px;margin:1px;border-radius:3px;white-space:pre'>"
                     f"{escape(shown)}</span>")
        if role != current:
            lines.append(f"{role:>9} | ")
            current = role
        lines[-1] += shown + "|"
    legend = " ".join(f"<span style='background:{c};padding:1px 4px'>{r}</span>" for r, c in _ROLE_COLOURS.items())
    html_text = f"<div style='font-family:monospace;line-height:1.9'>{''.join(chips)}<div>{legend}</div></div>"
    return Rendered(html_text, "\n".join(lines))
