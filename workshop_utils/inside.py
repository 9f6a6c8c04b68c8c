"""Inside the forward pass: the residual stream, the logit lens, attention weights, head scores, ablations, surprisal.

Notebook 09 reads the model between its embedding and its logits. Two sources, checked against each other:
the hand-written forward of notebook 08 (`workshop_utils.llama`), run here layer by layer so that it keeps what
it usually throws away (each layer's hidden state, each head's attention weights) and can silence chosen heads;
and the transformers model itself (`output_hidden_states`, and `output_attentions`, which needs eager attention
because SDPA never forms the weights). These are reference versions: the notebook writes its own code in cells
and checks it against them. Plots are static matplotlib figures and one ipywidget with a static fallback;
nothing is loaded from the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import llama
from .display import WithFallback, table
from .tokens import token_id_rows


@dataclass
class Trace:
    """What one hand-written forward pass saw, for one batch of sequences."""
    logits: torch.Tensor  # [batch, positions, vocab]
    residual: torch.Tensor  # [layers + 1, batch, positions, hidden]: the embedding, then after each layer, unnormed
    attentions: torch.Tensor  # [layers, batch, heads, queries, keys]: each head's softmax weights


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax weights [b, heads, n, seen + n] in float32, exactly as llama.attention forms them."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # each kv head serves a group of query heads
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    n, total = q.shape[2], k.shape[2]
    future = torch.ones(n, total, dtype=torch.bool, device=q.device).triu(total - n + 1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1, dtype=torch.float32)


def _recording_attention(kept: list, heads: list[int], mode: str):
    """llama.attention that also keeps its weights, and replaces the given heads' outputs (zero or their mean)."""
    def attend(q, k, v):
        weights = attention_weights(q, k)
        kept.append(weights)
        out = weights.to(q.dtype) @ v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # [b, heads, n, head_dim]
        if heads:
            out = out.clone()
            out[:, heads] = 0 if mode == "zero" else out[:, heads].mean(dim=2, keepdim=True).expand_as(out[:, heads])
        return out
    return attend


def _check_ablation(weights: llama.Weights, ablate: dict[int, list[int]] | None, mode: str) -> dict[int, list[int]]:
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}. Fix: pass mode='zero' or mode='mean'.")
    if ablate is not None and (not isinstance(ablate, dict) or not all(
            isinstance(heads, (list, tuple, set)) for heads in ablate.values())):
        raise ValueError(f"ablate must be a dict {{layer: [heads]}}, got {ablate!r}. Fix: for example "
                         "ablate={3: [0, 5]} silences heads 0 and 5 of layer 3 (a list even for one head).")
    ablate = {int(layer): [int(h) for h in heads] for layer, heads in (ablate or {}).items()}
    for layer, heads in ablate.items():
        if not 0 <= layer < len(weights.layers) or any(not 0 <= h < weights.n_heads for h in heads):
            raise ValueError(f"No head {heads} in layer {layer}: the model has {len(weights.layers)} layers of "
                             f"{weights.n_heads} heads. Fix: give {{layer: [heads]}} counted from 0.")
    return ablate


@torch.inference_mode()
def trace(weights: llama.Weights, input_ids, *, ablate: dict[int, list[int]] | None = None,
          mode: str = "zero") -> Trace:
    """Run llama.block layer by layer, keeping every hidden state and attention weight; ablate {layer: [heads]}.

    mode="zero" sets the chosen heads' outputs to zero; mode="mean" replaces each by its mean over the positions.
    Without ablation the logits are exactly those of llama.forward: the same functions, in the same order.
    """
    ablate = _check_ablation(weights, ablate, mode)
    ids = llama._checked_ids(weights, input_ids, None)
    x = weights.embed[ids]
    cos, sin = llama.rope_angles(weights, torch.arange(ids.shape[1], device=ids.device), x.dtype)
    residual, attentions = [x], []
    for i, layer in enumerate(weights.layers):
        attend = _recording_attention(attentions, ablate.get(i, []), mode)
        x, _ = llama.block(weights, layer, x, cos, sin, attention=attend)
        residual.append(x)
    logits = llama.linear(llama.rms_norm(x, weights.norm, weights.eps), weights.lm_head)
    return Trace(logits, torch.stack(residual), torch.stack(attentions))


def lens(weights: llama.Weights, residual: torch.Tensor) -> torch.Tensor:
    """The logit lens on unnormed hidden states: final norm, then lm_head, at every layer and position."""
    return llama.linear(llama.rms_norm(residual, weights.norm, weights.eps), weights.lm_head)


def _single(input_ids, vocab_size: int | None = None) -> torch.Tensor:
    return token_id_rows(input_ids, "input_ids", vocab_size=vocab_size, one_row=True)


@torch.inference_mode()
def logit_lens(model, input_ids) -> torch.Tensor:
    """[layers + 1, positions, vocab]: the final norm and lm_head applied to every entry of output_hidden_states.

    transformers' last hidden state is the final norm's output already (the off-by-one): it goes to lm_head alone,
    so the lens's last layer is the model's logits exactly.
    """
    ids = _single(input_ids, model.config.vocab_size).to(model.device)
    hidden = model(ids, output_hidden_states=True).hidden_states
    body, head = model.get_decoder(), model.get_output_embeddings()
    return torch.stack([head(body.norm(h)) for h in hidden[:-1]] + [head(hidden[-1])])[:, 0]


@torch.inference_mode()
def attention_patterns(model, input_ids) -> torch.Tensor:
    """[layers, heads, queries, keys]: every head's attention weights, from output_attentions (eager only)."""
    implementation = model.config._attn_implementation
    if implementation != "eager":
        raise ValueError(f"This model uses {implementation!r} attention, which returns no weights. Fix: "
                         "model.set_attn_implementation('eager'), or load with attn_implementation='eager'.")
    ids = _single(input_ids, model.config.vocab_size).to(model.device)
    return torch.stack(model(ids, output_attentions=True).attentions)[:, 0]


def repeated_random_tokens(vocab_size: int, length: int, *, seed: int = 0, low: int = 100) -> torch.Tensor:
    """[1, 2 * length]: `length` random ids (from low to vocab_size - 1, so no special tokens), then the same again."""
    if not isinstance(length, int) or length <= 0 or low >= vocab_size:
        raise ValueError(f"length must be positive and low below vocab_size, got {length} and {low}. "
                         "Fix: pass e.g. length=50, low=100.")
    half = torch.randint(low, vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
    return torch.cat((half, half), dim=1)


def head_scores(patterns: torch.Tensor, period: int | None = None) -> dict[str, torch.Tensor]:
    """Per-head scores [layers, heads] from patterns [layers, heads, q, k], each the mean weight on one key.

    sink: on the first position, over queries 1 onwards. previous: on the position just before the query.
    With period (a sequence whose second half repeats its first, `period` tokens each), over the queries of the
    second copy: duplicate, on the same token one period back; induction, on the token after it (what came next
    last time).
    """
    n = patterns.shape[-1]
    q = torch.arange(1, n)
    scores = {"sink": patterns[..., 1:, 0].mean(-1), "previous": patterns[..., q, q - 1].mean(-1)}
    if period is not None:
        if not isinstance(period, int) or not 0 < period < n:
            raise ValueError(f"period {period} does not fit {n} positions. Fix: pass the repeated half's length.")
        q = torch.arange(period, n)
        scores["duplicate"] = patterns[..., q, q - period].mean(-1)
        scores["induction"] = patterns[..., q, q - period + 1].mean(-1)
    return scores


def top_heads(scores: torch.Tensor, k: int = 3) -> list[tuple[int, int, float]]:
    """The k highest (layer, head, score) of a [layers, heads] score table."""
    if not isinstance(k, int) or not 1 <= k <= scores.numel():
        raise ValueError(f"k must be a whole number from 1 to {scores.numel()} (the heads in the table), got {k!r}. "
                         "Fix: pass e.g. k=3.")
    values, flat = scores.flatten().topk(k)
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1], float(v)) for v, i in zip(values, flat)]


def kv_groups(n_heads: int, n_kv_heads: int) -> list[list[int]]:
    """Which query heads share each key/value head (repeat_interleave's order: consecutive heads share)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads cannot be shared equally by {n_kv_heads} key/value heads. Fix: pass "
                         "config.num_attention_heads and config.num_key_value_heads (the first a multiple of the second).")
    group = n_heads // n_kv_heads
    return [list(range(kv * group, (kv + 1) * group)) for kv in range(n_kv_heads)]


def surprisal(logits: torch.Tensor, input_ids) -> torch.Tensor:
    """-log p (nats) of each actual next token: [positions - 1] for a [1, positions, vocab] batch of one."""
    ids = _single(input_ids, logits.shape[-1]).to(logits.device)
    if logits.dim() != 3 or logits.shape[:2] != (1, ids.shape[1]) or ids.shape[1] < 2:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not fit {ids.shape[1]} input ids: surprisal needs "
                         "[1, positions, vocab] logits of the same ids, and at least 2 of them. Fix: pass "
                         "model(input_ids).logits with those same input_ids.")
    return F.cross_entropy(logits.detach()[0, :-1].float(), ids[0, 1:], reduction="none")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each position's next-token distribution: how unsure the model is before it sees it."""
    logp = logits.detach().float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def perplexity(surprisals: torch.Tensor) -> float:
    """exp of the mean surprisal: the number of equally likely choices that would be as surprising."""
    return math.exp(float(surprisals.mean()))


# ---- plots -------------------------------------------------------------------------------------------------------

def _labels(tokenizer, ids) -> list[str]:
    return [repr(tokenizer.decode([int(i)]))[1:-1] for i in torch.as_tensor(ids).flatten()]


def plot_lens(lens_logits: torch.Tensor, input_ids, tokenizer, *, title: str = "logit lens: top token"):
    """Heatmap layer x position of the top token's probability, with the top token written in each cell."""
    import matplotlib.pyplot as plt

    probs = lens_logits.float().softmax(-1)
    top_p, top_id = probs.max(-1)  # [layers + 1, positions]
    layers, positions = top_p.shape
    fig, ax = plt.subplots(figsize=(1.3 * positions + 2, 0.22 * layers + 1.5))
    image = ax.imshow(top_p.numpy(), aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
    for layer in range(layers):
        for pos in range(positions):
            word = _labels(tokenizer, [top_id[layer, pos]])[0][:10]
            ax.text(pos, layer, word, ha="center", va="center", fontsize=6,
                    color="white" if top_p[layer, pos] > 0.6 else "black")
    ax.set_xticks(range(positions), _labels(tokenizer, input_ids), rotation=30, ha="right")
    ax.set_yticks(range(0, layers, 5))
    ax.set_xlabel("input position (the token read there)")
    ax.set_ylabel("hidden state (0 = embedding)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability of the top token")
    fig.tight_layout()
    plt.show()


def plot_answer_probability(probabilities: torch.Tensor, answer: str, *, title: str = ""):
    """The probability of one token at the last position, hidden state by hidden state."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(probabilities)), probabilities.numpy(), marker="o", markersize=3)
    ax.set_xlabel("hidden state (0 = embedding, last = the model's output)")
    ax.set_ylabel(f"p({answer!r})")
    ax.set_ylim(0, 1)
    ax.set_title(title or f"probability of {answer!r} through the layers")
    fig.tight_layout()
    plt.show()


def _draw_pattern(ax, pattern: torch.Tensor, labels: list[str], title: str):
    ax.imshow(pattern.float().numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=9)


def plot_patterns(patterns: torch.Tensor, heads: list[tuple[int, int]], input_ids, tokenizer):
    """Attention heatmaps (query x key) of the given (layer, head) pairs, side by side."""
    import matplotlib.pyplot as plt

    labels = _labels(tokenizer, input_ids)
    fig, axes = plt.subplots(1, len(heads), figsize=(3.6 * len(heads), 3.8), squeeze=False)
    for ax, (layer, head) in zip(axes[0], heads):
        _draw_pattern(ax, patterns[layer, head], labels, f"layer {layer}, head {head}")
    fig.tight_layout()
    plt.show()


def _pattern_png(pattern: torch.Tensor, labels: list[str], title: str) -> bytes:
    """One head's heatmap as PNG bytes, drawn without pyplot (nothing is displayed as a side effect)."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.2))
    _draw_pattern(fig.subplots(), pattern, labels, title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def pattern_picker(patterns: torch.Tensor, input_ids, tokenizer, *, layer: int = 0, head: int = 0) -> WithFallback:
    """A layer/head picker redrawing one head's heatmap; the static fallback names each query's strongest key."""
    import ipywidgets as widgets

    labels = _labels(tokenizer, input_ids)
    pick_layer = widgets.IntSlider(value=layer, min=0, max=patterns.shape[0] - 1, description="layer")
    pick_head = widgets.IntSlider(value=head, min=0, max=patterns.shape[1] - 1, description="head")
    image = widgets.Image(format="png")

    def draw(_=None):
        l, h = pick_layer.value, pick_head.value
        image.value = _pattern_png(patterns[l, h], labels, f"layer {l}, head {h}")

    draw()
    pick_layer.observe(draw, names="value")
    pick_head.observe(draw, names="value")
    strongest = patterns[layer, head].argmax(-1)
    snapshot = table(["query", f"strongest key (layer {layer}, head {head})"],
                     [(labels[q], labels[int(k)]) for q, k in enumerate(strongest)])
    return WithFallback(widgets.VBox([widgets.HBox([pick_layer, pick_head]), image]), snapshot)


def plot_head_scores(scores: torch.Tensor, *, title: str, label: str = "score"):
    """A [layers, heads] score table as a heatmap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 6))
    image = ax.imshow(scores.float().numpy(), aspect="auto", origin="lower", cmap="magma", vmin=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    plt.show()


def plot_sink(share: torch.Tensor):
    """The share of attention that goes to the first position, per layer (mean over heads and queries)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(share)), share.numpy())
    ax.set_xlabel("layer")
    ax.set_ylabel("attention on position 0")
    ax.set_ylim(0, 1)
    ax.set_title("the attention sink: weight on the first token, per layer")
    fig.tight_layout()
    plt.show()


def plot_loss_by_position(curves: dict[str, torch.Tensor], period: int, *, title: str):
    """Per-position loss curves (nats) on a repeated sequence, with the start of the second copy marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for name, loss in curves.items():
        ax.plot(range(1, len(loss) + 1), loss.numpy(), label=name, linewidth=1)
    ax.axvline(period, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("position of the predicted token (dashed: the second copy starts)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def plot_surprisal(input_ids, surprisals: torch.Tensor, tokenizer, *, per_row: int = 14):
    """The text token by token, each predicted token on a box coloured by its surprisal (nats), value below."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    labels, values = _labels(tokenizer, input_ids)[1:], surprisals.float().numpy()
    rows = math.ceil(len(labels) / per_row)
    fig, ax = plt.subplots(figsize=(per_row * 0.9, rows * 0.75 + 0.8))
    scale = colors.Normalize(vmin=0, vmax=max(float(values.max()), 1e-6))
    for i, (word, value) in enumerate(zip(labels, values)):
        row, col = divmod(i, per_row)
        ax.text(col, -row, word, ha="center", va="center", fontsize=8,
                bbox={"facecolor": cm.Reds(scale(value)), "edgecolor": "none", "pad": 2})
        ax.text(col, -row - 0.35, f"{value:.1f}", ha="center", va="center", fontsize=6, color="grey")
    ax.set_xlim(-0.6, per_row - 0.4)
    ax.set_ylim(-rows + 0.4, 0.5)
    ax.axis("off")
    ax.set_title("surprisal of each token, -log p in nats (darker = more surprising)")
    fig.colorbar(cm.ScalarMappable(norm=scale, cmap="Reds"), ax=ax, label="nats", fraction=0.03)
    plt.show()


__all__ = ["Trace", "attention_weights", "trace", "lens", "logit_lens", "attention_patterns",
           "repeated_random_tokens", "head_scores", "top_heads", "kv_groups", "surprisal", "entropy", "perplexity",
           "plot_lens", "plot_answer_probability", "plot_patterns", "pattern_picker", "plot_head_scores",
           "plot_sink", "plot_loss_by_position", "plot_surprisal"]
