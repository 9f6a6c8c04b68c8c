"""Show things in a notebook: HTML with a plain-text twin, widgets with a static fallback, progress."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from .notebook import in_notebook

# Class names that browser tests look for: a live widget versus its static stand-in.
STATIC_CLASS = "wu-static"


class Rendered:
    """HTML for notebooks and a readable text form for terminals and plain-text outputs."""

    def __init__(self, html_text: str, text: str):
        self.html = html_text
        self.text = text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def escape(value: Any) -> str:
    """HTML-escape any value's str()."""
    return html.escape(str(value))


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A fixed-width text table with one header line."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_html: bool = False) -> str:
    """An HTML table; cells are escaped unless raw_html says they already are HTML."""
    cell = (lambda c: str(c)) if raw_html else escape
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 8px'>{cell(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Rendered:
    """A table that shows as HTML in a notebook and as aligned text elsewhere."""
    rows = [list(r) for r in rows]
    return Rendered(html_table(header, rows), text_table(header, rows))


def bars(labels: Sequence[str], values: Sequence[float], *, muted: Sequence[bool] | None = None,
         value_format: str = "{:.3f}", title: str = "") -> Rendered:
    """A horizontal bar chart in plain HTML (no JavaScript), with a text twin; muted bars are grey."""
    muted = list(muted) if muted is not None else [False] * len(values)
    top = max([abs(v) for v in values] + [1e-12])
    rows_html, rows_text = [], []
    width = max([len(label) for label in labels] + [1])
    for label, value, grey in zip(labels, values, muted):
        colour = "#bbbbbb" if grey else "#4c78a8"
        shown = value_format.format(value)
        rows_html.append(
            f"<div style='display:flex;align-items:center;gap:6px;font-family:monospace'>"
            f"<span style='width:{width + 2}ch;white-space:pre;text-align:right'>{escape(label)}</span>"
            f"<span style='display:inline-block;height:0.9em;width:{300 * abs(value) / top:.1f}px;"
            f"background:{colour}'></span><span>{escape(shown)}</span></div>"
        )
        bar = "#" * round(30 * abs(value) / top) if not grey else "." * round(30 * abs(value) / top)
        rows_text.append(f"{label:>{width}} {bar} {shown}")
    heading = f"<div style='font-weight:bold'>{escape(title)}</div>" if title else ""
    text = "\n".join(([title] if title else []) + rows_text)
    return Rendered(f"<div>{heading}{''.join(rows_html)}</div>", text)


class WithFallback:
    """A live widget whose stored output also carries a static HTML snapshot and a text form.

    JupyterLab with a kernel (or with saved widget state) draws the widget; GitHub, nbviewer and a
    plain-text reader show the snapshot instead.
    """

    def __init__(self, widget, snapshot: Rendered):
        self.widget = widget
        self.snapshot = snapshot

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = f"<div class='{STATIC_CLASS}'>{self.snapshot.html}</div>"
        bundle["text/plain"] = self.snapshot.text
        return bundle


_HIDDEN_WIDGET = {"application/vnd.jupyter.widget-view+json": {"model_id": "", "version_major": 2, "version_minor": 0}}


def progress(iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator:
    """Iterate with a live progress bar that leaves nothing behind in the saved notebook."""
    if not in_notebook():
        yield from tqdm(iterable, desc=desc, total=total, leave=False)
        return
    import ipywidgets as widgets
    from IPython.display import display

    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    bar = widgets.IntProgress(value=0, min=0, max=total or 1, description=desc)
    label = widgets.Label("")
    box = widgets.HBox([bar, label])
    # Widget view only, no text/plain: live in JupyterLab, invisible to nbval's comparison.
    handle = display({"application/vnd.jupyter.widget-view+json": box._repr_mimebundle_()[
        "application/vnd.jupyter.widget-view+json"]}, raw=True, display_id=True)
    start = time.perf_counter()
    try:
        for done, item in enumerate(iterable, start=1):
            yield item
            bar.value = done
            rate = done / max(time.perf_counter() - start, 1e-9)
            label.value = f"{done}/{total or '?'}  {rate:.1f}/s"
    finally:
        handle.update(_HIDDEN_WIDGET, raw=True)  # an empty model id hides the output
        box.close()


def show_images(images: Sequence[Any], titles: Sequence[str] = (), *, columns: int = 8, scale: float = 1.3) -> None:
    """Show PIL images side by side, with an optional title under each (matplotlib)."""
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * scale, rows * (scale + 0.3)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, [*titles, *[""] * len(images)]):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    plt.show()


def plot_losses(losses: Sequence[float], title: str = "training loss") -> None:
    """Plot a loss per step (matplotlib)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(range(1, len(losses) + 1), losses, marker=".")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.show()
