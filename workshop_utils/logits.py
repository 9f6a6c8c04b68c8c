"""Reading the logits at every position: a per-position top-k table and an explorer widget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .display import Rendered, WithFallback, bars, escape, html_table, text_table
from .tokens import as_token_ids, describe_tokens


@dataclass
class PositionPrediction:
    """What the model predicts after the prefix ending at one position, and what really came next."""

    position: int
    token: str  # the input token at this position (visible label)
    top_ids: list[int]
    top_tokens: list[str]
    top_probs: list[float]
    next_id: int | None = None  # the token that really came next (None at the last position)
    next_token: str | None = None
    next_rank: int | None = None  # 1 means the model's first choice
    next_prob: float | None = None


def _check_k(k: int, vocab: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a whole number of at least 1, got {k!r}. Fix: k=5 shows the five likeliest tokens.")
    if k > vocab:
        raise ValueError(f"k={k} is more than the vocabulary ({vocab:,} tokens). Fix: choose k <= {vocab:,}.")


@torch.inference_mode()
def predict_positions(model, tokenizer, text_or_ids, k: int = 5) -> list[PositionPrediction]:
    """One forward pass; for each position, the top-k next tokens and the rank of the one that came next."""
    _check_k(k, model.config.vocab_size)
    ids = as_token_ids(tokenizer, text_or_ids)  # checks empty text and ids outside the vocabulary
    input_ids = torch.tensor([ids], device=model.device)
    probs = model(input_ids).logits[0].float().softmax(-1)
    top = probs.topk(k, dim=-1)
    labels = {t.id: t.label for t in describe_tokens(tokenizer, sorted(set(ids) | set(top.indices.flatten().tolist())))}
    rows = []
    for position, token_id in enumerate(ids):
        row = PositionPrediction(position, labels[token_id], top.indices[position].tolist(),
                                 [labels[int(i)] for i in top.indices[position]], top.values[position].tolist())
        if position + 1 < len(ids):
            row.next_id = ids[position + 1]
            row.next_token = labels[row.next_id]
            row.next_prob = float(probs[position, row.next_id])
            row.next_rank = int((probs[position] > probs[position, row.next_id]).sum()) + 1
        rows.append(row)
    return rows


def _row_cells(row: PositionPrediction, html: bool) -> list[str]:
    def candidate(token_id: int, label: str, p: float) -> str:
        if not html:
            return f"{label} {p:.3f}"
        background = "#bbf7d0;font-weight:bold" if token_id == row.next_id else "#f3f4f6"
        return (f"<span style='background:{background};padding:0 4px;margin-right:3px;border-radius:3px;"
                f"white-space:pre'><code>{escape(label)}</code> {p:.3f}</span>")

    tops = ("" if html else ", ").join(candidate(*c) for c in zip(row.top_ids, row.top_tokens, row.top_probs))
    token = f"<code style='white-space:pre'>{escape(row.token)}</code>" if html else row.token
    if row.next_id is None:
        return [str(row.position), token, tops, "(end of text)", "", ""]
    nxt = f"<code style='white-space:pre'>{escape(row.next_token)}</code>" if html else row.next_token
    return [str(row.position), token, tops, nxt, str(row.next_rank), f"{row.next_prob:.3f}"]


def next_token_table(model, tokenizer, text, k: int = 5) -> Rendered:
    """Per position: the input token, the top-k next tokens with probabilities, and the real next token's rank."""
    rows = predict_positions(model, tokenizer, text, k)
    header = ["pos", "input token", f"top-{k} next tokens (probability)", "really next", "rank", "p"]
    return Rendered(html_table(header, [_row_cells(r, True) for r in rows], raw_html=True),
                    text_table(header, [_row_cells(r, False) for r in rows]))


def _position_bars(row: PositionPrediction, prefix: str) -> Rendered:
    labels = [label + (" ◀ really next" if token_id == row.next_id else "")
              for token_id, label in zip(row.top_ids, row.top_tokens)]
    if row.next_id is None:
        after = "the end of the text: this is the prediction generation would use"
    elif row.next_id in row.top_ids:
        after = f"really next {row.next_token!r} (rank {row.next_rank}, p={row.next_prob:.3f})"
    else:
        after = f"really next {row.next_token!r} is not in the top {len(row.top_ids)} (rank {row.next_rank}, p={row.next_prob:.3f})"
    title = f"position {row.position}, after {prefix!r}: {after}"
    return bars(labels, row.top_probs, value_format="{:.3f}", title=title)


def position_explorer(model, tokenizer, text, k: int = 10) -> WithFallback:
    """Pick a position with a slider and see its top-k next tokens as a bar chart (one forward pass, done once)."""
    import ipywidgets as widgets

    rows = predict_positions(model, tokenizer, text, k)
    ids = as_token_ids(tokenizer, text)
    prefixes = [tokenizer.decode(ids[: p + 1]) for p in range(len(ids))]
    slider = widgets.IntSlider(value=len(rows) - 1, min=0, max=len(rows) - 1, description="position",
                               continuous_update=True).add_class("wu-position-slider")
    chart = widgets.HTML().add_class("wu-position-bars")

    def update(position: int) -> None:
        chart.value = _position_bars(rows[position], prefixes[position]).html

    slider.observe(lambda change: update(change["new"]), names="value")
    update(slider.value)
    shown = _position_bars(rows[slider.value], prefixes[slider.value])
    note = f"[static picture: run the notebook to move the slider] position = {slider.value}"
    snapshot = Rendered(f"<p>{note}</p>{shown.html}", f"{note}\n{shown.text}")
    return WithFallback(widgets.VBox([slider, chart]), snapshot)
