"""workshop_utils.llama, the hand-written forward: each piece against transformers' own module, the whole logits,
greedy generation equal to generate (with and without the hand-written cache), and the errors.

Two models: the default SmolLM2 (9 query heads sharing 3 kv-heads, tied embeddings) and a tiny random Llama with
8 query heads sharing 2 kv-heads (a group of 4), head_dim 8, an untied lm_head and another epsilon and rope_theta.
Tolerances: pieces that do the same float32 operations in the same order are held to exactly 0; sums the libraries
split differently (SDPA's fused kernel, 30 layers of it) to the stated ATOL_* below.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

from workshop_utils import llama

ATOL_SDPA = 1e-5  # one attention, ours against SDPA's fused kernel
ATOL_LAYER = 1e-4  # one decoder layer (SDPA inside), outputs of order 10
ATOL_LOGITS = 1e-3  # the whole model's logits, 30 layers; the logits themselves are of order 10
TEXTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
         "The three primary colours are", "Water boils at a temperature of", "My favourite book is"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=48,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                         tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["default", "tiny"])
def case(request, model, tokenizer, tiny):
    """(model, weights, prompts): the default model with tokenized texts, or the tiny one with random ids."""
    if request.param == "default":
        prompts = [tokenizer(t, return_tensors="pt").input_ids for t in TEXTS]
        return model, llama.from_model(model), prompts
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (1, n), generator=generator) for n in (5, 9, 3, 12, 7, 1)]
    return tiny, llama.from_model(tiny), prompts


def _hidden(model, n=7, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, model.config.hidden_size, generator=generator)


def _angles(model, weights, n, offset=0):
    positions = torch.arange(offset, offset + n)
    ours = llama.rope_angles(weights, positions, torch.float32)
    x = torch.zeros(1, n, model.config.hidden_size)
    theirs = model.model.rotary_emb(x, positions[None])
    return ours, (theirs[0][0], theirs[1][0])


def _qkv(model, weights, n=7, total=7, seed=0):
    """Random queries for the last n of total positions, and keys and values for all of them, rotated."""
    generator = torch.Generator().manual_seed(seed)
    h, kv, d = weights.n_heads, weights.n_kv_heads, weights.head_dim
    q, k, v = (torch.randn(2, heads, m, d, generator=generator) for heads, m in ((h, n), (kv, total), (kv, total)))
    return q, k, v


def _causal_mask(n, total):
    return torch.full((n, total), float("-inf")).triu(total - n + 1)[None, None]


# --- the pieces, one by one, against transformers' modules ---

def test_weights_are_shared_not_copied(case):
    model, weights, _ = case
    assert weights.embed.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert weights.layers[-1].down.data_ptr() == model.model.layers[-1].mlp.down_proj.weight.data_ptr()
    tied = model.config.tie_word_embeddings
    assert (weights.lm_head.data_ptr() == weights.embed.data_ptr()) == tied
    assert len(weights.layers) == model.config.num_hidden_layers


def test_embedding_is_a_row_lookup(case):
    model, weights, prompts = case
    ids = prompts[1]
    assert torch.equal(weights.embed[ids], model.model.embed_tokens(ids))


def test_rms_norm_with_the_models_epsilon(case):
    model, weights, _ = case
    x = _hidden(model)
    module = model.model.layers[1].post_attention_layernorm
    assert weights.eps == module.variance_epsilon
    assert torch.equal(llama.rms_norm(x, weights.layers[1].mlp_norm, weights.eps), module(x))  # exactly 0


def test_rope_angles_and_rotation(case):
    model, weights, _ = case
    (cos, sin), (their_cos, their_sin) = _angles(model, weights, 11, offset=5)
    assert torch.equal(cos, their_cos) and torch.equal(sin, their_sin)  # exactly 0
    q, k, _ = _qkv(model, weights, n=11, total=11)
    theirs = apply_rotary_pos_emb(q, k, their_cos[None], their_sin[None])
    assert torch.equal(llama.apply_rope(q, cos, sin), theirs[0])
    assert torch.equal(llama.apply_rope(k, cos, sin), theirs[1])


@pytest.mark.parametrize("n,total", [(7, 7), (1, 9), (3, 10)])  # prefill, one decode step, a few cached positions
def test_attention_against_eager_and_sdpa(case, n, total):
    model, weights, _ = case
    module = model.model.layers[0].self_attn
    q, k, v = _qkv(model, weights, n, total)
    ours = llama.attention(q, k, v).transpose(1, 2)  # [b, n, heads, d], as transformers returns it
    eager, _ = eager_attention_forward(module, q, k, v, _causal_mask(n, total), scaling=module.scaling)
    assert (ours - eager).abs().max() < 1e-6
    mask = None if n == total else _causal_mask(n, total)  # SDPA alone is causal only when it sees no cache
    sdpa, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=module.scaling)
    assert (ours - sdpa).abs().max() < ATOL_SDPA


def test_mlp_is_swiglu(case):
    model, weights, _ = case
    x = _hidden(model)
    assert torch.equal(llama.mlp(x, weights.layers[2]), model.model.layers[2].mlp(x))  # exactly 0


@pytest.mark.parametrize("index", [0, -1])
def test_one_decoder_layer(case, index):
    model, weights, _ = case
    x = _hidden(model, n=9)
    (cos, sin), (their_cos, their_sin) = _angles(model, weights, 9)
    layer = model.model.layers[index]
    with torch.inference_mode():
        theirs = layer(x, attention_mask=None, position_embeddings=(their_cos[None], their_sin[None]))
    ours, (k, v) = llama.block(weights, weights.layers[index], x, cos, sin)
    assert (ours - theirs).abs().max() < ATOL_LAYER
    assert k.shape == v.shape == (2, weights.n_kv_heads, 9, weights.head_dim)


# --- the whole model ---

def test_whole_logits(case):
    model, weights, prompts = case
    for ids in prompts:
        logits, cache = llama.forward(weights, ids)
        with torch.inference_mode():
            reference = model(ids).logits
        assert logits.shape == reference.shape == (1, ids.shape[1], model.config.vocab_size)
        assert (logits - reference).abs().max() < ATOL_LOGITS
        assert cache.positions == ids.shape[1] and len(cache.keys) == model.config.num_hidden_layers


def test_cache_continues_where_it_stopped(case):
    model, weights, prompts = case
    ids = prompts[3]
    full, _ = llama.forward(weights, ids)
    first, cache = llama.forward(weights, ids[:, :-3])
    rest, cache = llama.forward(weights, ids[:, -3:-1], cache)
    last, cache = llama.forward(weights, ids[:, -1:], cache)
    pieces = torch.cat([first, rest, last], dim=1)
    assert (pieces - full).abs().max() < ATOL_LOGITS
    assert cache.positions == ids.shape[1] and cache.keys[0].shape[2] == ids.shape[1]


def _generate(model, ids, n):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)


def _uncached_greedy(weights, ids, n):
    """The loop of notebook 03 on the hand-written forward: the whole sequence every step, no cache."""
    with torch.inference_mode():
        for _ in range(n):
            logits, _ = llama.forward(weights, ids)
            next_id = logits[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=-1)
            if next_id.item() in weights.eos_ids:
                break
    return ids


def test_greedy_equals_generate_with_and_without_the_cache(case):
    model, weights, prompts = case
    for ids in prompts:
        expected = _generate(model, ids, 8)
        assert torch.equal(llama.greedy_generate(weights, ids, 8), expected)
        assert torch.equal(_uncached_greedy(weights, ids, 8), expected)


def test_greedy_stops_at_eos_and_pads_finished_rows_like_generate(tiny):
    weights = llama.from_model(tiny)
    ids = torch.tensor([[5, 17, 42, 8], [9, 3, 250, 77]])
    free = llama.greedy_generate(weights, ids, 6, eos_token_id=[])
    stop = int(free[0, 5])  # row 0's second new token: make it the end of sequence
    ours = llama.greedy_generate(weights, ids, 6, eos_token_id=stop)
    with torch.inference_mode():
        theirs = tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               eos_token_id=stop)
    assert torch.equal(ours, theirs)
    assert ours[0, 5] == stop and (ours[0, 6:] == 0).all()  # then padding (pad_token_id=0)


def test_swapped_pieces_are_used(case):
    model, weights, prompts = case
    calls = []

    def counting_linear(x, weight):
        calls.append(weight.shape)
        return llama.linear(x, weight)

    logits, _ = llama.forward(weights, prompts[0], linear=counting_linear)
    assert len(calls) == 7 * model.config.num_hidden_layers + 1  # q, k, v, o, gate, up, down; then lm_head
    assert torch.equal(logits, llama.forward(weights, prompts[0])[0])
    no_rotation, _ = llama.forward(weights, prompts[3], rope=lambda x, cos, sin: x)
    assert (no_rotation - llama.forward(weights, prompts[3])[0]).abs().max() > 1e-2


# --- bad input: a clear error naming the fix, before any computation ---

@pytest.fixture
def no_computation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the input should have been refused before any layer ran")

    monkeypatch.setattr(llama, "block", refuse)


def test_refuses_a_model_that_is_not_llama():
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"Qwen2ForCausalLM is not a Llama.*supports LlamaForCausalLM.*Fix:"):
        llama.from_model(qwen)


def test_refuses_a_llama_variant_it_does_not_compute():
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, attention_bias=True)
    with pytest.raises(ValueError, match=r"attention_bias.*Fix:"):
        llama.from_model(LlamaForCausalLM(config))


def test_refuses_ids_outside_the_vocabulary(tiny, no_computation):
    weights = llama.from_model(tiny)
    with pytest.raises(ValueError, match=r"Token id 300 at \(0, 2\) is outside the model's vocabulary \(ids 0 to "
                                         r"299\)\. Fix: encode"):
        llama.forward(weights, torch.tensor([[4, 5, 300]]))
    with pytest.raises(ValueError, match="Token id -1"):
        llama.greedy_generate(weights, torch.tensor([[-1, 5]]), 3)


def test_refuses_a_sequence_past_the_context(tiny, no_computation):
    weights = llama.from_model(tiny)  # max_position_embeddings=48
    with pytest.raises(ValueError, match=r"49 positions .* context of 48\. Fix:"):
        llama.forward(weights, torch.ones(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match=r"50 positions .* context of 48\. Fix:"):
        llama.greedy_generate(weights, torch.ones(1, 40, dtype=torch.long), 10)


def test_refuses_a_sequence_past_the_context_through_the_cache(tiny):
    weights = llama.from_model(tiny)
    _, cache = llama.forward(weights, torch.ones(1, 47, dtype=torch.long))
    llama.forward(weights, torch.ones(1, 1, dtype=torch.long), cache)  # position 48 of 48: allowed
    with pytest.raises(ValueError, match=r"49 positions .* context of 48"):
        llama.forward(weights, torch.ones(1, 2, dtype=torch.long), cache)


def test_refuses_a_cache_from_another_model(model, tiny):
    _, cache = llama.forward(llama.from_model(model), torch.tensor([[1, 2, 3]]))
    weights = llama.from_model(tiny)
    with pytest.raises(ValueError, match=r"another model.*Fix: pass cache=None"):
        llama.forward(weights, torch.tensor([[4]]), cache)
    llama.forward(llama.from_model(model), torch.tensor([[4]]), cache)  # the same model, weights taken again: fine


def test_refuses_ids_that_are_not_token_ids(tiny):
    weights = llama.from_model(tiny)
    with pytest.raises(ValueError, match=r"must be integers.*Fix:"):
        llama.forward(weights, torch.rand(1, 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        llama.greedy_generate(weights, torch.tensor([[4]]), 0)
