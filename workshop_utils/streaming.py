"""Streaming text to a reader: an incremental detokenizer and a chat view that types (notebook 13, section 2).

- IncrementalDecoder: token ids in, text that is safe to show out. It never shows half a UTF-8
  character (the U+FFFD of notebook 01) and, joined, equals tokenizer.decode of all the ids.
- ChatView: an ipywidgets chat exchange whose reply grows as pieces arrive (from a
  TextIteratorStreamer or from the decoder), with a static snapshot for GitHub and nbval.
"""

from __future__ import annotations

from .tokens import check_tokenizer, token_id_rows


class IncrementalDecoder:
    """Turn token ids into text as they come: push(id) returns what is safe to show, finish() the rest.

    It decodes a short window: the tokens since the last text it showed, plus the ones before them
    (prefix), because some tokenizers decode a token differently at the start of a text. Text that
    ends in U+FFFD is half a character whose other bytes are still to come: it waits for them.
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = False):
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # first id of the context window
        self.read_offset = 0  # ids before this one have been shown

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id) -> str:
        """Add one token id; return the new text that is safe to show now ("" while a character is incomplete)."""
        ids = token_id_rows([token_id], "token_id", vocab_size=self.vocab_size, one_row=True)[0].tolist()
        if len(ids) != 1:
            raise ValueError(f"push takes one token id, got {len(ids)}. Fix: push them one at a time: "
                             "for token_id in ids: decoder.push(token_id).")
        self.ids.append(ids[0])
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix):]

    def finish(self) -> str:
        """The text not shown yet (an incomplete character decodes to U+FFFD here, as in tokenizer.decode)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):]


CHAT_CLASS = "wu-chat"  # the browser test looks for this class


class ChatView:
    """A chat exchange that types the reply as pieces arrive: append(piece) adds text to the live widget.

    Displayed, it is a WithFallback: GitHub, nbviewer and nbval see the snapshot taken when it was
    shown (the question and an empty reply), never a half-typed one.
    """

    def __init__(self, question: str):
        import ipywidgets as widgets

        self.question = question
        self.text = ""
        self.widget = widgets.HTML(self._html())
        self.widget.add_class(CHAT_CLASS)

    def _html(self) -> str:
        from .display import escape

        bubble = "padding:6px 10px;border-radius:10px;margin:4px 0;white-space:pre-wrap;max-width:40em"
        return (f"<div style='font-family:sans-serif'><div style='{bubble};background:#dbeafe'>"
                f"{escape(self.question)}</div><div class='wu-reply' style='{bubble};background:#dcfce7'>"
                f"{escape(self.text) or '…'}</div></div>")

    def append(self, piece: str) -> None:
        """Add a piece of the reply and redraw."""
        self.text += piece
        self.widget.value = self._html()

    def _repr_mimebundle_(self, **kwargs):
        from .display import Rendered, WithFallback

        snapshot = Rendered(self._html(), f"user: {self.question}\nassistant: {self.text or '…'}")
        return WithFallback(self.widget, snapshot)._repr_mimebundle_(**kwargs)
