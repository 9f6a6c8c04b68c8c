"""Sampling made visible: a next-token explorer (temperature, top-k, top-p) and a step-through generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .display import Rendered, WithFallback, bars, escape
from .generation import warp
from .tokens import describe_tokens


@dataclass
class Candidate:
    """One next-token candidate: its probability at the temperature, whether the filters keep it, and after them."""

    token_id: int
    label: str
    prob: float  # softmax(logits / temperature), before top-k and top-p
    kept: bool
    renormalised: float  # the probability it is drawn with once the filters removed the others (0 if removed)


@dataclass
class Candidates:
    """The likeliest candidates shown, plus how many tokens of the whole vocabulary the filters keep."""

    shown: list[Candidate]
    kept_count: int
    vocab_size: int
    temperature: float
    top_k: int | None
    top_p: float | None


def _settings(temperature: float, top_k: int | None, top_p: float | None) -> str:
    k = "off" if top_k is None else str(top_k)
    p = "off" if top_p is None or top_p >= 1.0 else f"{top_p:.2f}"
    return f"temperature {temperature:.2f}, top-k {k}, top-p {p}"


def candidates(logits: torch.Tensor, labels: dict[int, str] | None = None, *, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, n: int = 12) -> Candidates:
    """The n likeliest next tokens of one position's logits: kept or not by the filters, renormalised probabilities."""
    logits = torch.as_tensor(logits).float().flatten()
    before = warp(logits, temperature).softmax(-1)
    warped = warp(logits, temperature, top_k, top_p)
    kept, after = torch.isfinite(warped), warped.softmax(-1)
    top = torch.topk(before, min(n, logits.numel()))
    labels = labels or {}
    shown = [Candidate(int(i), labels.get(int(i), str(int(i))), float(before[i]), bool(kept[i]), float(after[i]))
             for i in top.indices]
    return Candidates(shown, int(kept.sum()), logits.numel(), temperature, top_k, top_p)


def candidates_chart(found: Candidates, *, chosen: int | None = None, title: str = "") -> Rendered:
    """Bars of the renormalised probabilities; removed candidates are grey, the chosen one is marked."""
    labels = []
    for c in found.shown:
        mark = "kept" if c.kept else "cut "
        arrow = " ◀ chosen" if c.token_id == chosen else ""
        labels.append(f"{c.label} [{mark} p={c.prob:.3f}]{arrow}")
    heading = title or (f"{_settings(found.temperature, found.top_k, found.top_p)}: "
                        f"{found.kept_count:,} of {found.vocab_size:,} tokens kept; bars = renormalised probability")
    return bars(labels, [c.renormalised for c in found.shown], muted=[not c.kept for c in found.shown],
                value_format="{:.3f}", title=heading)


def _labels(tokenizer, ids) -> dict[int, str]:
    return {t.id: t.label for t in describe_tokens(tokenizer, sorted({int(i) for i in ids}))}


@torch.inference_mode()
def _last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids], device=model.device)).logits[0, -1].float().cpu()


def next_token_explorer(model, tokenizer, text: str, *, n: int = 12, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None) -> WithFallback:
    """Sliders for temperature, top-k and top-p over one prompt's next-token distribution (one forward pass)."""
    import ipywidgets as widgets

    ids = tokenizer(text).input_ids
    if not ids:
        raise ValueError("The text is empty, so there is no next token to explore. Fix: pass a prompt.")
    logits = _last_logits(model, ids)
    labels = _labels(tokenizer, torch.topk(logits, min(n * 4, logits.numel())).indices.tolist())
    style = {"description_width": "90px"}
    t_slider = widgets.FloatSlider(value=temperature, min=0.1, max=3.0, step=0.1, description="temperature",
                                   readout_format=".1f", style=style).add_class("wu-temperature")
    k_slider = widgets.IntSlider(value=top_k or 0, min=0, max=100, description="top-k (0=off)",
                                 style=style).add_class("wu-top-k")
    p_slider = widgets.FloatSlider(value=1.0 if top_p is None else top_p, min=0.05, max=1.0, step=0.05,
                                   description="top-p (1=off)", readout_format=".2f", style=style).add_class("wu-top-p")
    chart = widgets.HTML().add_class("wu-explorer-chart")

    def found() -> Candidates:
        k = k_slider.value or None
        p = p_slider.value if p_slider.value < 1.0 else None
        return candidates(logits, labels, temperature=t_slider.value, top_k=k, top_p=p, n=n)

    def update(_=None) -> None:
        chart.value = candidates_chart(found()).html

    for slider in (t_slider, k_slider, p_slider):
        slider.observe(update, names="value")
    update()
    shown = candidates_chart(found())
    note = f"[static picture: run the notebook to move the sliders] next token after {text!r}"
    snapshot = Rendered(f"<p>{escape(note)}</p>{shown.html}", f"{note}\n{shown.text}")
    return WithFallback(widgets.VBox([t_slider, k_slider, p_slider, chart]), snapshot)


class Stepper:
    """Generation one token at a time: the candidates of the next position, then the one picked from them."""

    def __init__(self, model, tokenizer, text: str, *, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, n: int = 8):
        self.model, self.tokenizer, self.n = model, tokenizer, n
        self.ids = list(tokenizer(text).input_ids)
        if not self.ids:
            raise ValueError("The text is empty, so there is nothing to continue. Fix: pass a prompt.")
        self.prompt_length = len(self.ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p  # temperature None: greedy
        self.generator = torch.Generator().manual_seed(seed)  # its own generator: the notebook's seed is untouched

    def step(self) -> tuple[int, Candidates]:
        """Add one token; return it and the candidates it was chosen from."""
        logits = _last_logits(self.model, self.ids)
        greedy = self.temperature is None
        t = 1.0 if greedy else self.temperature
        # Greedy is top-k with k = 1: one candidate kept, with all the probability.
        found = candidates(logits, None, temperature=t, top_k=1 if greedy else self.top_k,
                           top_p=None if greedy else self.top_p, n=self.n)
        if greedy:
            chosen = int(logits.argmax())
        else:
            probs = warp(logits, t, self.top_k, self.top_p).softmax(-1)
            chosen = int(torch.multinomial(probs, 1, generator=self.generator))
        labels = _labels(self.tokenizer, [*(c.token_id for c in found.shown), chosen])
        for c in found.shown:
            c.label = labels[c.token_id]
        self.ids.append(chosen)
        return chosen, found

    def text(self) -> str:
        """The prompt and the tokens added so far."""
        return self.tokenizer.decode(self.ids)

    def view(self, chosen: int | None, found: Candidates | None) -> Rendered:
        """The text so far (new tokens highlighted) and, after a step, the chart it chose from."""
        prompt = self.tokenizer.decode(self.ids[:self.prompt_length])
        added = self.tokenizer.decode(self.ids[self.prompt_length:])
        count = len(self.ids) - self.prompt_length
        head_html = (f"<div style='white-space:pre-wrap;font-family:monospace'>{escape(prompt)}"
                     f"<span style='background:#bbf7d0'>{escape(added)}</span></div>"
                     f"<div style='color:#555'>{count} new token(s)</div>")
        head_text = f"{prompt}[{added}]\n{count} new token(s)"
        if found is None:
            return Rendered(head_html, head_text)
        chart = candidates_chart(found, chosen=chosen,
                                 title=f"token {count} was chosen from ({self.mode()}):")
        return Rendered(head_html + chart.html, head_text + "\n" + chart.text)

    def mode(self) -> str:
        """How tokens are chosen, in words."""
        return "greedy: the argmax" if self.temperature is None else "sampled, " + _settings(
            self.temperature, self.top_k, self.top_p)


def step_through_generator(model, tokenizer, text: str, *, temperature: float | None = None, top_k: int | None = None,
                           top_p: float | None = None, seed: int = 0, steps_shown: int = 1) -> WithFallback:
    """A button that adds one token and shows the candidates it chose from; the snapshot shows steps_shown steps."""
    import ipywidgets as widgets

    stepper = Stepper(model, tokenizer, text, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    button = widgets.Button(description="add one token", icon="plus").add_class("wu-step-button")
    view = widgets.HTML().add_class("wu-step-view")
    last = (None, None)
    for _ in range(steps_shown):
        last = stepper.step()
    view.value = stepper.view(*last).html
    snapshot_view = stepper.view(*last)

    def on_click(_) -> None:
        view.value = stepper.view(*stepper.step()).html

    button.on_click(on_click)
    note = "[static picture: run the notebook and press the button to add tokens]"
    snapshot = Rendered(f"<p>{note}</p>{snapshot_view.html}", f"{note}\n{snapshot_view.text}")
    return WithFallback(widgets.VBox([button, view]), snapshot)
