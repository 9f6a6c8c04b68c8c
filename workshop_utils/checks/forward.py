"""Checks for notebook 08: a layer's parameter count, a repaired attention, logits against a reference, and the
hand-written greedy loop against generate's own tokens and logits."""

from __future__ import annotations

import numpy as np
import torch

from .core import CheckFailed


def layer_parameters(config) -> int:
    """Parameters of one decoder layer: q, k, v, o, gate, up, down and the two norms (no biases)."""
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_and_o = 2 * hidden * config.num_attention_heads * head_dim
    k_and_v = 2 * hidden * config.num_key_value_heads * head_dim
    return q_and_o + k_and_v + 3 * hidden * inner + 2 * hidden


def check_layer_params(name: str, answer, config) -> None:
    """One layer's parameter count; recognise a missing norm, a missing MLP matrix, or k and v without GQA."""
    __tracebackhide__ = True  # noqa: F841
    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
        raise CheckFailed(f"{name}: expected a whole number of parameters, got {type(answer).__name__}: {answer!r}.")
    right = layer_parameters(config)
    if answer == right:
        print(f"✔ {name}")
        return
    hidden, inner = config.hidden_size, config.intermediate_size
    kv_width = 2 * hidden * config.num_key_value_heads * (hidden // config.num_attention_heads)
    mistakes = {
        right - 2 * hidden: "you left out the two RMSNorm weight vectors (hidden numbers each)",
        right - hidden * inner: "the SwiGLU MLP has three matrices (gate, up, down), not two",
        right + 2 * hidden * hidden - kv_width: f"k and v have {config.num_key_value_heads} heads, not "
                                                f"{config.num_attention_heads} (grouped-query attention): they are "
                                                "narrower than q",
        right - kv_width: "you left out the key and value projections",
        right + hidden * config.vocab_size: "the embedding belongs to the model, not to each layer",
    }
    raise CheckFailed(f"{name}: you have {int(answer):,}, expected {right:,}: "
                      + mistakes.get(int(answer), "add q, k, v and o, then gate, up and down, then the two "
                                                  "norms; read each matrix's shape from the state_dict") + ".")


def _variants(reference):
    """Attention with one known bug each, to name the bug when an answer matches one of them."""
    def unscaled(q, k, v):
        return reference(q * q.shape[-1] ** 0.5, k, v)

    def over_head_dim(q, k, v):
        return reference(q * q.shape[-1] ** -0.5, k, v)

    def shifted(q, k, v):  # position i also sees position i + 1
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        n, total = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        future = torch.ones(n, total, dtype=torch.bool).triu(total - n + 2)
        return scores.masked_fill(future, float("-inf")).softmax(-1) @ v

    return {"the scores are not divided by sqrt(head_dim)": unscaled,
            "the scores are divided by head_dim; divide by sqrt(head_dim)": over_head_dim,
            "the mask lets each position see the next one: it must hide every position after its own": shifted}


def check_attention(name: str, fn, *, heads: int = 9, kv_heads: int = 3, head_dim: int = 64) -> None:
    """A causal grouped-query attention fn(q, k, v) against the reference, in prefill and in decode shapes."""
    __tracebackhide__ = True  # noqa: F841
    from ..llama import attention

    generator = torch.Generator().manual_seed(0)
    for n, total in ((6, 6), (1, 6), (2, 6)):
        q = torch.randn(1, heads, n, head_dim, generator=generator)
        k, v = (torch.randn(1, kv_heads, total, head_dim, generator=generator) for _ in range(2))
        expected = attention(q, k, v)
        try:
            answer = fn(q, k, v)
        except Exception as error:  # noqa: BLE001 (the learner's code can fail in any way)
            raise CheckFailed(f"{name}: with {n} new position(s) and {total} in all, your function raised "
                              f"{type(error).__name__}: {error}.") from error
        answer = torch.as_tensor(answer)
        if tuple(answer.shape) != tuple(expected.shape):
            raise CheckFailed(f"{name}: shape {tuple(answer.shape)}, expected {tuple(expected.shape)} "
                              "[batch, heads, new positions, head_dim].")
        bad = (answer - expected).abs() > 1e-5
        if bad.any():
            _, head, row, _ = (int(i) for i in bad.nonzero()[0])
            why = next((reason for reason, variant in _variants(attention).items()
                        if torch.allclose(answer, variant(q, k, v), atol=1e-5)), "compare each step with the text")
            raise CheckFailed(f"{name}: with {n} new position(s) and {total} in all, head {head}, new position "
                              f"{row} differs first: {why}.")
    print(f"✔ {name}")


def check_logits(name: str, ours, expected, *, atol: float = 1e-4, tokenizer=None) -> None:
    """Logits [batch, positions, vocab] within atol of the reference; otherwise the first position that is off."""
    __tracebackhide__ = True  # noqa: F841
    if isinstance(ours, tuple) or isinstance(expected, tuple):
        raise ValueError(f"{name}: got a tuple where logits were expected (llama.forward returns (logits, cache)). "
                         "Fix: logits, cache = llama.forward(weights, ids), then pass logits.")
    ours, expected = torch.as_tensor(ours).float(), torch.as_tensor(expected).float()
    if tuple(ours.shape) != tuple(expected.shape):
        raise CheckFailed(f"{name}: shape {tuple(ours.shape)}, expected {tuple(expected.shape)}.")
    gap = (ours - expected).abs().amax(-1)  # [batch, positions]
    if (gap > atol).any():
        row, position = (int(i) for i in (gap > atol).nonzero()[0])
        raise CheckFailed(f"{name}: row {row}, position {position} is the first off, by up to "
                          f"{float(gap[row, position]):.2e} (allowed {atol:.0e}); positions before it agree.")
    print(f"✔ {name} (largest difference {float(gap.max()):.1e})")


def check_steps_against_generate(name: str, sequence, step_logits, generated, generate_logits, tokenizer) -> None:
    """Our tokens against generate's; where they part, the two tokens and generate's logit gap between them."""
    __tracebackhide__ = True  # noqa: F841
    ours, theirs = torch.as_tensor(sequence).flatten(), torch.as_tensor(generated).flatten()
    prompt = len(ours) - len(step_logits)
    for i, (a, b) in enumerate(zip(ours.tolist()[prompt:], theirs.tolist()[prompt:])):
        if a != b:
            gap = float(generate_logits[i][b] - generate_logits[i][a])
            raise CheckFailed(f"{name}: new token {i} differs: yours {a} {tokenizer.decode([a])!r}, generate's {b} "
                              f"{tokenizer.decode([b])!r}; generate's logit gap between them {gap:.2e}, your "
                              f"logits differ from generate's there by up to "
                              f"{float((step_logits[i] - generate_logits[i]).abs().max()):.2e}.")
    if len(ours) != len(theirs):
        raise CheckFailed(f"{name}: you have {len(ours)} tokens, generate {len(theirs)}: check the stop at EOS.")
    print(f"✔ {name}")


def difference(ours, reference) -> str:
    """The largest absolute difference in scientific notation, or 'exactly 0' when every number is the same."""
    gap = float((torch.as_tensor(ours).detach().float() - torch.as_tensor(reference).detach().float()).abs().max())
    return "exactly 0" if gap == 0 else f"{gap:.1e}"
