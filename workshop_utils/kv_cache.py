"""The KV cache in numbers: its size by formula and as measured, what grouped-query attention saves, step times."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .display import Rendered, table


def head_dim(config) -> int:
    """The size of one attention head: config.head_dim, else hidden_size // num_attention_heads."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads


def kv_heads(config) -> int:
    """The number of key/value heads (num_key_value_heads; without it, one per query head)."""
    value = getattr(config, "num_key_value_heads", None)
    return int(value) if value else int(config.num_attention_heads)


def kv_cache_bytes(config, positions: int, *, batch_size: int = 1, dtype: torch.dtype = torch.float32,
                   n_kv_heads: int | None = None) -> int:
    """Bytes of a full KV cache: layers x 2 (keys, values) x kv-heads x head-dim x positions x bytes x batch."""
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 0:
        raise ValueError(f"positions must be a whole number >= 0, got {positions!r}. Fix: for example 1024.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}. Fix: for example 1.")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}. Fix: for example torch.float32.")
    heads = kv_heads(config) if n_kv_heads is None else n_kv_heads
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"n_kv_heads must be a whole number >= 1, got {heads!r}. Fix: for example "
                         "config.num_key_value_heads.")
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * heads * head_dim(config) * positions * element * batch_size


def measured_cache_bytes(cache) -> int:
    """Bytes held by a DynamicCache's own tensors: the keys and values of every layer (cache.layers[i])."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"expected a transformers Cache with .layers (e.g. a DynamicCache), got {type(cache).__name__}. "
                         "Fix: pass out.past_key_values from a forward pass with use_cache=True.")
    total = 0
    for layer in layers:
        for tensor in (layer.keys, layer.values):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def gqa_saving(config) -> float:
    """How many times smaller the cache is with grouped-query attention: query heads / kv-heads (9 / 3 = 3)."""
    return config.num_attention_heads / kv_heads(config)


def memory_table(config, positions: Sequence[int] = (128, 1024, 8192), *, dtype: torch.dtype = torch.float32) -> Rendered:
    """The cache's size by the formula at several lengths, with GQA and as it would be with one kv-head per query head."""
    rows = []
    for n in positions:
        gqa = kv_cache_bytes(config, n, dtype=dtype)
        full = kv_cache_bytes(config, n, dtype=dtype, n_kv_heads=int(config.num_attention_heads))
        rows.append((f"{n:,}", f"{gqa / 2**20:.1f}", f"{full / 2**20:.1f}", f"{(full - gqa) / 2**20:.1f}"))
    return table(["positions", f"cache MiB ({kv_heads(config)} kv-heads)",
                  f"MiB with {config.num_attention_heads} kv-heads", "MiB saved"], rows)


def plot_logit_differences(comparisons: dict, floor: float = 1e-7) -> None:
    """Notebook 04: each loop's largest logit difference against generate's, step by step (log scale).

    comparisons maps a label to a Comparison made with ours_logits (compare_with_generate(..., ours_logits=...)).
    A difference of exactly 0 cannot sit on a log axis: it is drawn at `floor`, on a line labelled "exactly 0".
    A loop that parted from generate is marked with a cross at the step where it did (its curve stops there).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for label, comparison in comparisons.items():
        diffs = comparison.step_logit_diffs
        if diffs is None or comparison.logits_from != "your loop":
            raise ValueError(f"{label!r} holds no per-step logits of the loop. Fix: compare with "
                             "compare_with_generate(..., ours_logits=logits) for the loop's own logits.")
        values = diffs.clamp_min(floor).tolist()
        line, = ax.plot(range(len(values)), values, marker=".", label=label)
        if not comparison.equal:
            ax.plot([len(values) - 1], [values[-1]], marker="x", markersize=10, color=line.get_color())
    ax.axhline(floor, color="grey", lw=0.8, ls=":")
    ax.text(0, floor * 1.6, "exactly 0", color="grey", fontsize=8)
    ax.set(yscale="log", xlabel="new token", ylabel="largest |logit difference|",
           title="each loop's own logits against generate's (x: the loop parted there)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    plt.show()
