"""workshop_utils.inside: the hand-written trace against transformers, the lens, attention weights, scores, ablation."""

import math

import matplotlib
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from workshop_utils import inside, llama
from workshop_utils.checks import CheckFailed, check_duplicate_scores, check_layer0_prediction, check_lens

matplotlib.use("Agg")
TEXTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):"]
ATOL_HIDDEN = 1e-3  # hidden states of order 1 to 100 after 30 layers: float32 noise of order 1e-4
ATOL_LOGITS = 1e-3  # eager against SDPA: different summation orders, logits of order 10


def _tiny_llama(attn="eager"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                         tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny_llama()


@pytest.fixture(scope="module")
def qwen():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, attn_implementation="eager")
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["default", "tiny"])
def case(request, tiny):
    """(model, prompts): the default model with tokenized texts, or the tiny Llama with random ids."""
    if request.param == "default":
        model, tokenizer = request.getfixturevalue("model_and_tokenizer")
        return model, [tokenizer(t, return_tensors="pt").input_ids for t in TEXTS]
    generator = torch.Generator().manual_seed(1)
    return tiny, [torch.randint(3, 300, (1, n), generator=generator) for n in (5, 9, 1)]


@pytest.fixture
def eager(model):
    """The default model switched to eager attention for one test, then back to what it was."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    yield model
    model.set_attn_implementation(before)


def test_trace_without_ablation_is_llama_forward_exactly(case):
    model, prompts = case
    weights = llama.from_model(model)
    for ids in prompts:
        assert torch.equal(inside.trace(weights, ids).logits, llama.forward(weights, ids)[0])


def test_residual_stream_matches_output_hidden_states(case):
    model, prompts = case
    weights = llama.from_model(model)
    for ids in prompts:
        residual = inside.trace(weights, ids).residual
        with torch.inference_mode():
            hidden = torch.stack(model(ids, output_hidden_states=True).hidden_states)
        assert residual.shape == hidden.shape == (model.config.num_hidden_layers + 1, *ids.shape,
                                                  model.config.hidden_size)
        torch.testing.assert_close(residual[:-1], hidden[:-1], atol=ATOL_HIDDEN, rtol=1e-4)
        # transformers' last entry is the final norm's output: ours is before it (the off-by-one)
        normed = llama.rms_norm(residual[-1], weights.norm, weights.eps)
        torch.testing.assert_close(normed, hidden[-1], atol=ATOL_HIDDEN, rtol=1e-4)
        assert (residual[-1] - hidden[-1]).abs().max() > 0.1


def test_lens_last_layer_is_the_logits_exactly(case, qwen):
    model, prompts = case
    for m, ids in [(model, p) for p in prompts] + [(qwen, torch.tensor([[5, 17, 3, 99, 42]]))]:
        lens = inside.logit_lens(m, ids)
        with torch.inference_mode():
            logits = m(ids).logits[0]
        assert lens.shape == (m.config.num_hidden_layers + 1, ids.shape[1], m.config.vocab_size)
        assert torch.equal(lens[-1], logits)


def test_norming_the_last_hidden_state_again_is_wrong(model, tokenizer):
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
        twice = model.lm_head(model.model.norm(out.hidden_states[-1]))
    assert (twice - out.logits).abs().max() > 1.0


def test_hand_lens_equals_logit_lens(case):
    model, prompts = case
    weights = llama.from_model(model)
    for ids in prompts:
        hand = inside.lens(weights, inside.trace(weights, ids).residual)[:, 0]
        torch.testing.assert_close(hand, inside.logit_lens(model, ids), atol=ATOL_LOGITS, rtol=1e-4)


def test_attention_patterns_refuse_sdpa_with_the_fix(model, tokenizer):
    assert model.config._attn_implementation != "eager"
    with pytest.raises(ValueError, match="Fix: model.set_attn_implementation"):
        inside.attention_patterns(model, tokenizer("Hi", return_tensors="pt").input_ids)


def test_eager_weights_equal_hand_written_weights(tiny, eager, tokenizer):
    cases = [(tiny, torch.tensor([[4, 8, 15, 16, 23, 42]]))]
    cases += [(eager, tokenizer(t, return_tensors="pt").input_ids) for t in TEXTS[:2]]
    for m, ids in cases:
        patterns = inside.attention_patterns(m, ids)
        hand = inside.trace(llama.from_model(m), ids).attentions[:, 0]
        assert patterns.shape == (m.config.num_hidden_layers, m.config.num_attention_heads, ids.shape[1], ids.shape[1])
        torch.testing.assert_close(hand, patterns, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]))
        assert patterns.triu(1).abs().max() == 0  # causal: no weight on the future


def test_eager_and_sdpa_logits_agree(model, tokenizer):
    before = model.config._attn_implementation
    try:
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt").input_ids
            with torch.inference_mode():
                model.set_attn_implementation("sdpa")
                sdpa = model(ids).logits
                model.set_attn_implementation("eager")
                eager = model(ids).logits
            assert 0 < (sdpa - eager).abs().max() < ATOL_LOGITS or torch.equal(sdpa, eager)
            assert torch.equal(sdpa.argmax(-1), eager.argmax(-1))
    finally:
        model.set_attn_implementation(before)


def test_head_scores_on_planted_patterns():
    n, period = 9, 4
    q = torch.arange(n)
    patterns = torch.zeros(1, 4, n, n)
    patterns[0, 0, :, 0] = 1  # a sink head
    patterns[0, 1, q, (q - 1).clamp(min=0)] = 1  # a previous-token head
    patterns[0, 2, q[period:], q[period:] - period + 1] = 1  # an induction head on the second copy
    patterns[0, 3, q[period:], q[period:] - period] = 1  # a duplicate-token head
    scores = inside.head_scores(patterns, period)
    # where one planted head also hits another's key: the sink head's query 1 (key 0 = q - 1) and query 4 (key 0 =
    # q - period); the previous head's query 1 and the duplicate head's query 4 (both key 0); 8 and 5 queries scored
    expected = {"sink": [1, 1 / 8, 0, 1 / 8], "previous": [1 / 8, 1, 0, 0], "induction": [0, 0, 1, 0],
                "duplicate": [1 / 5, 0, 0, 1]}
    for name, values in expected.items():
        torch.testing.assert_close(scores[name], torch.tensor([values], dtype=torch.float), msg=name)
    assert inside.top_heads(scores["induction"], 1) == [(0, 2, 1.0)]
    with pytest.raises(ValueError, match="Fix"):
        inside.head_scores(patterns, n)


@pytest.mark.slow
def test_induction_high_on_repeated_tokens_low_on_random(model):
    weights, period = llama.from_model(model), 30
    repeated = inside.repeated_random_tokens(model.config.vocab_size, period, seed=0)
    assert torch.equal(repeated[:, :period], repeated[:, period:])
    random = torch.randint(100, model.config.vocab_size, (1, 2 * period), generator=torch.Generator().manual_seed(1))
    on_repeat = inside.head_scores(inside.trace(weights, repeated).attentions[:, 0], period)["induction"]
    on_random = inside.head_scores(inside.trace(weights, random).attentions[:, 0], period)["induction"]
    assert on_repeat.max() > 0.5 and on_random.max() < 0.1
    layer, head, _ = inside.top_heads(on_repeat, 1)[0]
    assert on_random[layer, head] < 0.05


@pytest.mark.slow
def test_ablating_the_top_induction_head_raises_the_repeat_loss_more_than_other_heads(model):
    weights, period = llama.from_model(model), 30
    ids = inside.repeated_random_tokens(model.config.vocab_size, period, seed=0)
    clean = inside.trace(weights, ids)
    layer, head, _ = inside.top_heads(inside.head_scores(clean.attentions[:, 0], period)["induction"], 1)[0]

    def repeat_loss(ablate):
        return float(inside.surprisal(inside.trace(weights, ids, ablate=ablate).logits, ids)[period - 1:].mean())

    base, top = repeat_loss(None), repeat_loss({layer: [head]})
    others = [repeat_loss({layer: [h]}) for h in (0, 1, 2) if h != head]
    assert top > base + 1.0, (base, top)
    assert all(top - base > 3 * abs(o - base) for o in others), (base, top, others)


def test_ablation_equals_a_hook_on_transformers(tiny):
    """Zeroing a head in the hand-written trace equals zeroing its slice of o_proj's input in transformers."""
    ids, ablate = torch.tensor([[3, 9, 27, 81, 243, 5, 7]]), {1: [2, 5], 2: [0]}
    d = tiny.config.head_dim
    handles = []
    for layer, heads in ablate.items():
        def pre_hook(module, args, heads=heads):
            x = args[0].clone()
            for h in heads:
                x[..., h * d:(h + 1) * d] = 0
            return (x,)
        handles.append(tiny.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook))
    try:
        with torch.inference_mode():
            hooked = tiny(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        clean = tiny(ids).logits
    ours = inside.trace(llama.from_model(tiny), ids, ablate=ablate).logits
    torch.testing.assert_close(ours, hooked, atol=1e-5, rtol=1e-4)
    assert (ours - clean).abs().max() > 1e-2  # the ablation did something
    mean = inside.trace(llama.from_model(tiny), ids, ablate=ablate, mode="mean").logits
    assert (mean - ours).abs().max() > 1e-3


def test_bad_ablations_are_refused_with_the_fix(tiny):
    weights = llama.from_model(tiny)
    for ablate, mode in [({3: [0]}, "zero"), ({0: [8]}, "zero"), ({0: [1]}, "half")]:
        with pytest.raises(ValueError, match="Fix"):
            inside.trace(weights, [[1, 2, 3]], ablate=ablate, mode=mode)
    with pytest.raises(ValueError, match="Fix"):
        inside.logit_lens(tiny, torch.ones(2, 3, dtype=torch.long))


def test_surprisal_and_perplexity_match_the_models_loss(case):
    model, prompts = case
    for ids in prompts:
        if ids.shape[1] < 2:
            continue
        with torch.inference_mode():
            out = model(ids, labels=ids)
        s = inside.surprisal(out.logits, ids)
        assert s.shape == (ids.shape[1] - 1,) and (s >= 0).all()
        assert math.isclose(inside.perplexity(s), math.exp(float(out.loss)), rel_tol=1e-5)
        h = inside.entropy(out.logits)[0]
        assert ((h >= -1e-5) & (h <= math.log(model.config.vocab_size) + 1e-4)).all()


def test_kv_groups_follow_repeat_interleave():
    assert inside.kv_groups(9, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    k = torch.arange(3.0).reshape(1, 3, 1, 1)
    shared = k.repeat_interleave(3, dim=1).flatten().tolist()
    assert [[int(shared[h]) for h in group] for group in inside.kv_groups(9, 3)] == [[0] * 3, [1] * 3, [2] * 3]


def test_checks_pass_on_right_answers_and_explain_wrong_ones(model, tokenizer):
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    lens = inside.logit_lens(model, ids)
    check_layer0_prediction("same", lens, ids)
    with pytest.raises(CheckFailed, match="the input token itself at"):
        check_layer0_prediction("next", lens, ids)
    check_lens(lens, model, ids)
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states
        no_norm = torch.stack([model.lm_head(h) for h in hidden])[:, 0]
        double = torch.stack([model.lm_head(model.model.norm(h)) for h in hidden])[:, 0]
    with pytest.raises(CheckFailed, match="the final norm .* comes before lm_head"):
        check_lens(no_norm, model, ids)
    with pytest.raises(CheckFailed, match="Only the last hidden state differs"):
        check_lens(double, model, ids)
    period, n = 3, 7
    patterns = torch.rand(2, 2, n, n, generator=torch.Generator().manual_seed(0)).tril().softmax(-1)
    scores = inside.head_scores(patterns, period)
    check_duplicate_scores(scores["duplicate"], patterns, period)
    with pytest.raises(CheckFailed, match="These are the induction scores"):
        check_duplicate_scores(scores["induction"], patterns, period)


def test_plots_and_picker_draw_offline(tokenizer):
    ids = tokenizer("a b a b", return_tensors="pt").input_ids
    n = ids.shape[1]
    patterns = torch.eye(n).expand(2, 3, n, n)
    picker = inside.pattern_picker(patterns, ids, tokenizer, layer=1, head=2)
    bundle = picker._repr_mimebundle_()
    assert "strongest key (layer 1, head 2)" in bundle["text/plain"]
    assert "<script" not in bundle["text/html"] and "http" not in bundle["text/html"]
    sliders, image = picker.widget.children
    before = image.value
    sliders.children[0].value = 0  # pick layer 0: the picture is redrawn
    assert bytes(image.value) != bytes(before) and bytes(image.value).startswith(b"\x89PNG")
    inside.plot_patterns(patterns, [(0, 0), (1, 2)], ids, tokenizer)
    inside.plot_surprisal(ids, torch.rand(n - 1), tokenizer)
