"""The Llama forward pass by hand: the model's own tensors, plain functions, a cache of plain tensors.

Notebook 08 writes each piece and proves it equal to transformers' module; later notebooks build on this
reference. Each piece is a module-level function, and forward(linear=, rope=, attention=) swaps one of them
(a quantized linear, a paged attention, the other rotary convention) without copying the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generation import check_max_new_tokens, eos_ids
from .models import context_length
from .tokens import token_id_rows

SUPPORTED = ("LlamaForCausalLM",)  # same layout: SmolLM2, TinyLlama, Llama 2; not Qwen2 (q/k/v biases)
HANDLED = {"rope_type": "default", "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


@dataclass
class Layer:
    """One decoder layer's tensors: the attention's norm and projections, then the MLP's."""
    attn_norm: torch.Tensor  # [hidden]
    q: torch.Tensor  # [heads * head_dim, hidden]
    k: torch.Tensor  # [kv_heads * head_dim, hidden]
    v: torch.Tensor  # [kv_heads * head_dim, hidden]
    o: torch.Tensor  # [hidden, heads * head_dim]
    mlp_norm: torch.Tensor  # [hidden]
    gate: torch.Tensor  # [intermediate, hidden]
    up: torch.Tensor  # [intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]


@dataclass
class Weights:
    """Everything the forward pass reads: tensors shared with the model, and the numbers from its config."""
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[Layer]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden]; the embedding itself when the two are tied
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float  # RMSNorm's epsilon
    inv_freq: torch.Tensor  # [head_dim / 2] rotary frequencies, 1 / rope_theta ** (2i / head_dim)
    context: int | None  # positions the model can attend to
    eos_ids: list[int]  # generation_config's end-of-sequence ids
    pad_id: int | None  # what finished rows of a batch get, as generate does
    owner: tuple  # what a cache remembers of the model that filled it: the embedding's memory, the shapes


@dataclass
class Cache:
    """Each layer's keys and values, [batch, kv_heads, positions, head_dim], and the positions already seen."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: int
    owner: tuple


def from_model(model) -> Weights:
    """The tensors of a loaded transformers Llama model, shared (not copied), and the numbers forward needs."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"{name} is not a Llama model; workshop_utils.llama supports {', '.join(SUPPORTED)}. "
                         + ("Fix: load_model() returns (model, tokenizer): pass the model alone, from_model(model)."
                            if isinstance(model, tuple) else
                            "Fix: load one, e.g. load_model() for the default SmolLM2, or extend from_model and "
                            "block for this architecture (Qwen2 adds biases to q, k and v)."))
    c = model.config
    found = {"rope_type": c.rope_parameters.get("rope_type"), "hidden_act": c.hidden_act,
             "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias}
    if found != HANDLED:
        raise ValueError(f"This Llama has {found}; workshop_utils.llama handles {HANDLED} only. Fix: use a model "
                         "with those settings (the default model has them).")
    m, d = model.model, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    t = [[x.weight.detach() for x in (l.input_layernorm, l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj,
          l.self_attn.o_proj, l.post_attention_layernorm, l.mlp.gate_proj, l.mlp.up_proj, l.mlp.down_proj)]
         for l in m.layers]  # detach: the same memory, without autograd
    inv_freq = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    embed, eos, pad = m.embed_tokens.weight.detach(), eos_ids(model), model.generation_config.pad_token_id
    return Weights(embed, [Layer(*tensors) for tensors in t], m.norm.weight.detach(), model.lm_head.weight.detach(),
                   c.num_attention_heads, c.num_key_value_heads, d, c.rms_norm_eps, inv_freq.to(embed.device),
                   context_length(model), eos, int(pad) if pad is not None else (eos[0] if eos else None),
                   (embed.data_ptr(), len(t), c.num_key_value_heads, d))


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T: every projection goes through here (swap it for a quantized one)."""
    return F.linear(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide each vector by its root mean square (in float32), then scale each channel by weight."""
    x32 = x.float()  # as transformers does, whatever the model's dtype
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope_angles(weights: Weights, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, [positions, head_dim]: each frequency twice, for the two halves."""
    freqs = positions[:, None].float() * weights.inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: dimension i pairs with i + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (i, i + head_dim/2) of every head by its position's angle (transformers' convention)."""
    return x * cos + rotate_half(x) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention: q [b, heads, n, d]; k, v [b, kv_heads, seen + n, d] -> [b, heads, n, d]."""
    group = q.shape[1] // k.shape[1]  # query heads served by each key/value head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    n, total = q.shape[2], k.shape[2]  # the i-th new query sits at position total - n + i
    future = torch.ones(n, total, dtype=torch.bool, device=q.device).triu(total - n + 1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype) @ v


def mlp(x: torch.Tensor, layer: Layer, linear=linear) -> torch.Tensor:
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    return linear(F.silu(linear(x, layer.gate)) * linear(x, layer.up), layer.down)


def block(weights: Weights, layer: Layer, x: torch.Tensor, cos, sin, past=None, *, linear=linear,
          rope=apply_rope, attention=attention):
    """One decoder layer, two residual connections; returns x and this layer's keys and values (with the past's)."""
    h = rms_norm(x, layer.attn_norm, weights.eps)
    q = linear(h, layer.q).unflatten(-1, (-1, weights.head_dim)).transpose(1, 2)  # [b, heads, n, head_dim]
    k = linear(h, layer.k).unflatten(-1, (-1, weights.head_dim)).transpose(1, 2)  # [b, kv_heads, n, head_dim]
    v = linear(h, layer.v).unflatten(-1, (-1, weights.head_dim)).transpose(1, 2)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    if past is not None:
        k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
    y = attention(q, k, v).transpose(1, 2).flatten(2)  # [b, n, heads * head_dim]
    x = x + linear(y, layer.o)
    x = x + mlp(rms_norm(x, layer.mlp_norm, weights.eps), layer, linear)
    return x, (k, v)

def _checked_ids(weights: Weights, input_ids, cache: Cache | None, new_tokens: int = 0) -> torch.Tensor:
    """input_ids as [batch, positions], every ValueError raised before any computation."""
    if not isinstance(weights, Weights):
        raise ValueError(f"weights must be what llama.from_model returns, got {type(weights).__name__}. "
                         "Fix: weights = llama.from_model(model), then pass weights.")
    if cache is not None and not isinstance(cache, Cache):
        raise ValueError(f"cache must be the Cache that llama.forward returned, got {type(cache).__name__}. "
                         "Fix: logits, cache = llama.forward(weights, ids), then pass that cache (or None).")
    ids = token_id_rows(input_ids, "input_ids")  # str, ragged rows, floats, empty, padded BatchEncoding: refused
    vocab, bad = weights.embed.shape[0], ((ids < 0) | (ids >= weights.embed.shape[0])).nonzero()
    if len(bad):
        raise ValueError(f"Token id {int(ids[tuple(bad[0])])} at {tuple(bad[0].tolist())} is outside the model's "
                         f"vocabulary (ids 0 to {vocab - 1}). Fix: encode the text with this model's tokenizer.")
    if cache is not None and cache.owner != weights.owner:
        raise ValueError("This cache was filled by another model's weights. Fix: pass cache=None to start afresh, "
                         "or the cache that forward returned for these same weights.")
    total = (0 if cache is None else cache.positions) + ids.shape[1] + new_tokens
    if weights.context is not None and total > weights.context:
        raise ValueError(f"{total} positions (cached, fed and to generate) exceed the model's context of "
                         f"{weights.context}. Fix: use a shorter prompt or ask for fewer new tokens.")
    return ids.to(weights.embed.device)


def forward(weights: Weights, input_ids, cache: Cache | None = None, *, linear=linear, rope=apply_rope,
            attention=attention) -> tuple[torch.Tensor, Cache]:
    """Logits [batch, positions, vocab] for input_ids, continuing after the cache's positions; and the new cache."""
    ids = _checked_ids(weights, input_ids, cache)
    seen = 0 if cache is None else cache.positions
    x = weights.embed[ids]  # [batch, positions, hidden]
    cos, sin = rope_angles(weights, torch.arange(seen, seen + ids.shape[1], device=ids.device), x.dtype)
    new_cache = Cache([], [], seen + ids.shape[1], weights.owner)
    for i, layer in enumerate(weights.layers):
        past = None if cache is None else (cache.keys[i], cache.values[i])
        x, (k, v) = block(weights, layer, x, cos, sin, past, linear=linear, rope=rope, attention=attention)
        new_cache.keys.append(k), new_cache.values.append(v)
    return linear(rms_norm(x, weights.norm, weights.eps), weights.lm_head), new_cache


@torch.inference_mode()
def greedy_generate(weights: Weights, input_ids, max_new_tokens: int, eos_token_id=None) -> torch.Tensor:
    """The prompt and up to max_new_tokens argmax tokens, with the cache, as generate(do_sample=False) returns them."""
    check_max_new_tokens(max_new_tokens)
    sequence = _checked_ids(weights, input_ids, None, max_new_tokens)
    eos = weights.eos_ids if eos_token_id is None else eos_ids(None, eos_token_id.tolist()
                                                              if torch.is_tensor(eos_token_id) else eos_token_id)
    unfinished = torch.ones(sequence.shape[0], dtype=torch.bool, device=sequence.device)
    logits, cache = forward(weights, sequence)
    for step in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(dim=-1)
        if eos:  # rows that already ended get padding, as in generate
            next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, weights.pad_id))
            unfinished &= ~torch.isin(next_ids, torch.tensor(eos, device=next_ids.device))
        sequence = torch.cat((sequence, next_ids[:, None]), dim=-1)
        if not unfinished.any() or step == max_new_tokens - 1:
            break
        logits, cache = forward(weights, next_ids[:, None], cache)
    return sequence
