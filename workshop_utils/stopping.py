"""Stopping on text: a StoppingCriteria equal in effect to generate(stop_strings=...) (notebook 13, section 1).

A stop string is text, not a token: it may begin in one token and end in the next. So StopOnText
decodes the last few tokens and stops when a stop string ends inside the newest token, as
transformers' StopStringCriteria does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria

from .tokens import check_tokenizer


class StopOnText(StoppingCriteria):
    """Stop a row when one of stop_strings ends inside its newest token, like generate(stop_strings=...)."""

    def __init__(self, tokenizer, stop_strings: str | Sequence[str]):
        check_tokenizer(tokenizer)
        given = stop_strings
        stop_strings = [given] if isinstance(given, str) else list(given) if isinstance(given, (list, tuple)) else []
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"stop_strings must be one non-empty string or a list of them, got {given!r}. "
                             'Fix: for example StopOnText(tokenizer, ["\\n\\n", "."]).')
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        # Every token holds at least one byte, so this many tokens hold the longest stop string and one more.
        self.window = max(len(s.encode("utf-8")) for s in stop_strings) + 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs) -> torch.BoolTensor:
        done = []
        for row in input_ids.tolist():
            tail = row[-self.window:]
            # The earlier tokens' text, less a character they leave unfinished (shown as U+FFFD), which
            # the newest token may finish.
            before = self.tokenizer.decode(tail[:-1]).rstrip("\ufffd")
            text = self.tokenizer.decode(tail)
            # An occurrence counts only if it ends after the earlier tokens' text, in the newest token.
            done.append(any(text.find(s, max(len(before) - len(s) + 1, 0)) >= 0 for s in self.stop_strings))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
