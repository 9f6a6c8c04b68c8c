"""The reference loops of workshop_utils.generation: equal to model.generate, greedy and sampled, on several
prompts, a left-padded batch and models of other architectures; the filters against transformers' warpers;
every ValueError before any forward pass; compare_with_generate finding real differences."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from workshop_utils.generation import (
    apply_temperature,
    compare_with_generate,
    greedy_generate,
    sample_generate,
    top_k_filter,
    top_p_filter,
)

PROMPTS = ["The capital of France is", "Once upon a time, a small robot", "def add(a, b):",
           "Three colours: red, green and", "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"]
BATCH = ["Hi", "The three largest cities of Europe are", "Water boils at"]  # different lengths: left padding
NEW = 8


def _ids(tokenizer, text):
    return tokenizer(text, return_tensors="pt").input_ids


def _batch(tokenizer, texts):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side


def _seeded_generate(model, seed, **kwargs):
    torch.manual_seed(seed)
    return model.generate(do_sample=True, **kwargs)


# --- greedy ---

@pytest.mark.parametrize("text", [PROMPTS[0], *(pytest.param(p, marks=pytest.mark.slow) for p in PROMPTS[1:])])
def test_greedy_equals_generate(model, tokenizer, text):
    ids = _ids(tokenizer, text)
    expected = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(greedy_generate(model, ids, NEW), expected)


@pytest.mark.slow
def test_greedy_batch_with_left_padding_equals_generate(model, tokenizer):
    batch = _batch(tokenizer, BATCH)
    assert (batch.attention_mask == 0).any(), "the prompts must have different lengths"
    expected = model.generate(**batch, max_new_tokens=NEW, do_sample=False)
    ours = greedy_generate(model, batch.input_ids, NEW, attention_mask=batch.attention_mask)
    assert torch.equal(ours, expected)
    # Each row continues as it would alone: padding and position ids are handled.
    for row, text in enumerate(BATCH):
        alone = greedy_generate(model, _ids(tokenizer, text), NEW)
        assert ours[row, -NEW:].tolist() == alone[0, -NEW:].tolist()


@pytest.mark.slow
def test_greedy_stops_at_eos_like_generate(model, tokenizer):
    batch = _batch(tokenizer, BATCH)
    plain = model.generate(**batch, max_new_tokens=NEW, do_sample=False)
    width = batch.input_ids.shape[1]
    eos = int(plain[0, width + 2])  # row 0's third new token: row 0 ends there, the others go on
    assert int(plain[1, width + 2]) != eos
    expected = model.generate(**batch, max_new_tokens=NEW, do_sample=False, eos_token_id=eos)
    ours = greedy_generate(model, batch.input_ids, NEW, attention_mask=batch.attention_mask, eos_token_id=eos)
    assert torch.equal(ours, expected)
    pad = model.generation_config.pad_token_id
    assert ours[0, width + 3:].eq(pad).all(), "a finished row is filled with the pad token"


def test_greedy_stops_when_every_row_is_done(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[0])
    first = int(greedy_generate(model, ids, 1)[0, -1])
    ours = greedy_generate(model, ids, NEW, eos_token_id=[first, 12345])
    assert ours.shape[1] == ids.shape[1] + 1
    assert torch.equal(ours, model.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=[first, 12345]))


@pytest.mark.slow
def test_greedy_without_cache_refeeds_and_agrees(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[1])
    assert torch.equal(greedy_generate(model, ids, 4, use_cache=False), model.generate(ids, max_new_tokens=4, do_sample=False))


# --- sampling ---

SAMPLED = [  # (prompt, temperature, top_k, top_p, seed)
    (PROMPTS[0], 1.0, None, None, 0),
    (PROMPTS[1], 0.7, None, None, 1),
    (PROMPTS[2], 1.3, 20, None, 2),
    (PROMPTS[3], 1.0, None, 0.8, 3),
    (PROMPTS[4], 0.9, 40, 0.95, 4),
    (PROMPTS[0], 1.5, 5, 0.5, 5),
]


@pytest.mark.parametrize(("text", "temperature", "top_k", "top_p", "seed"),
                         [SAMPLED[0], *(pytest.param(*case, marks=pytest.mark.slow) for case in SAMPLED[1:])])
def test_seeded_sampling_equals_generate(model, tokenizer, text, temperature, top_k, top_p, seed):
    ids = _ids(tokenizer, text)
    ours = sample_generate(model, ids, NEW, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    kwargs = {"temperature": temperature, "top_k": top_k or 0}  # None here means off, which is top_k=0 there
    if top_p is not None:
        kwargs["top_p"] = top_p
    expected = _seeded_generate(model, seed, input_ids=ids, max_new_tokens=NEW, **kwargs)
    assert torch.equal(ours, expected)


@pytest.mark.slow
def test_sampling_batch_with_left_padding_equals_generate(model, tokenizer):
    batch = _batch(tokenizer, BATCH)
    ours = sample_generate(model, batch.input_ids, NEW, attention_mask=batch.attention_mask, temperature=1.2,
                           top_p=0.9, seed=7)
    expected = _seeded_generate(model, 7, **batch, max_new_tokens=NEW, temperature=1.2, top_k=0, top_p=0.9)
    assert torch.equal(ours, expected)


@pytest.mark.slow
def test_top_k_none_is_not_generates_default(model, tokenizer):
    """generate without top_k silently keeps 50 tokens; our None keeps them all, like generate(top_k=0)."""
    ids = _ids(tokenizer, PROMPTS[1])
    ours = sample_generate(model, ids, 24, temperature=2.0, seed=0)
    assert torch.equal(ours, _seeded_generate(model, 0, input_ids=ids, max_new_tokens=24, temperature=2.0, top_k=0))
    assert not torch.equal(ours, _seeded_generate(model, 0, input_ids=ids, max_new_tokens=24, temperature=2.0))
    assert torch.equal(sample_generate(model, ids, 24, temperature=2.0, top_k=50, seed=0),
                       _seeded_generate(model, 0, input_ids=ids, max_new_tokens=24, temperature=2.0))


@pytest.mark.slow
def test_seed_none_uses_the_global_generator(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[2])
    torch.manual_seed(11)
    ours = sample_generate(model, ids, NEW)
    assert torch.equal(ours, _seeded_generate(model, 11, input_ids=ids, max_new_tokens=NEW, top_k=0))


# --- another architecture: small random models built from a config ---

TINY = {  # a vocabulary of 96 and a context of 64; token 0 is BOS, 1 is EOS
    # learned absolute positions: wrong position ids under left padding would show
    "gpt2": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=96, n_positions=64, bos_token_id=0, eos_token_id=1),
    "qwen2": dict(vocab_size=96, hidden_size=64, intermediate_size=128, max_position_embeddings=64, bos_token_id=0,
                  eos_token_id=1),
}


TINY_IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 3, 4, 2, 11], [0, 0, 0, 0, 7, 12]])
TINY_MASK = (torch.arange(6) >= torch.tensor([[0], [2], [4]])).long()


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def tiny(request, tiny_model):
    return tiny_model(request.param, **TINY[request.param])


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_model):
    return tiny_model("gpt2", **TINY["gpt2"])


@pytest.mark.parametrize("use_cache", [True, False])
def test_tiny_model_greedy_batch_equals_generate(tiny, use_cache):
    expected = tiny.generate(TINY_IDS, attention_mask=TINY_MASK, max_new_tokens=20, do_sample=False, use_cache=use_cache)
    ours = greedy_generate(tiny, TINY_IDS, 20, attention_mask=TINY_MASK, use_cache=use_cache)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("seed", range(3))
def test_tiny_model_sampling_batch_equals_generate(tiny, seed):
    # A hot temperature on a 96-token vocabulary draws the EOS token (1) now and then, so rows end early.
    ours = sample_generate(tiny, TINY_IDS, 30, attention_mask=TINY_MASK, temperature=3.0, top_k=60, top_p=0.97,
                           seed=seed, eos_token_id=[1, 2, 3])
    expected = _seeded_generate(tiny, seed, input_ids=TINY_IDS, attention_mask=TINY_MASK, max_new_tokens=30,
                                temperature=3.0, top_k=60, top_p=0.97, eos_token_id=[1, 2, 3])
    assert torch.equal(ours, expected)


@pytest.mark.slow
def test_tiny_model_rows_end_at_eos(tiny_gpt2):
    model = tiny_gpt2
    finished = 0
    for seed in range(6):
        ours = sample_generate(model, TINY_IDS, 30, attention_mask=TINY_MASK, temperature=3.0, seed=seed,
                               eos_token_id=[1, 2, 3])
        assert torch.equal(ours, _seeded_generate(model, seed, input_ids=TINY_IDS, attention_mask=TINY_MASK,
                                                  max_new_tokens=30, temperature=3.0, top_k=0, eos_token_id=[1, 2, 3]))
        new = ours[:, TINY_IDS.shape[1]:]
        finished += int(torch.isin(new, torch.tensor([1, 2, 3])).any(-1).sum())
    assert finished > 0, "no row ever hit an EOS token: the stopping rule was not exercised"


# --- filters against transformers' warpers ---

def _random_logits(seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties, at the cut too
        logits = torch.randint(-3, 3, (6, 40), generator=g).float()
    else:
        logits = torch.randn(6, 300, generator=g) * 3
    logits[0, :5] = float("-inf")  # already removed tokens stay removed
    logits[1] = torch.full_like(logits[1], -20.0)
    logits[1, 7] = 20.0  # one token holds nearly all the probability: the one-token minimum
    return logits


LOGITS = [pytest.param(seed, ties, id=f"seed{seed}-{'ties' if ties else 'randn'}") for seed in range(3)
          for ties in (True, False)]


@pytest.mark.parametrize(("seed", "ties"), LOGITS)
@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 2.5])
def test_temperature_matches_the_warper(seed, ties, t):
    logits = _random_logits(seed, ties)
    assert torch.equal(apply_temperature(logits, t), TemperatureLogitsWarper(t)(None, logits))


@pytest.mark.parametrize(("seed", "ties"), LOGITS)
@pytest.mark.parametrize("k", [1, 2, 5, 17, 40, 1000])
def test_top_k_matches_the_warper(seed, ties, k):
    logits = _random_logits(seed, ties)
    ours = top_k_filter(logits, k)
    assert torch.equal(ours, TopKLogitsWarper(top_k=k, min_tokens_to_keep=1)(None, logits))
    assert (torch.isfinite(ours).sum(-1) >= 1).all()


@pytest.mark.parametrize(("seed", "ties"), LOGITS)
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_top_p_matches_the_warper(seed, ties, p):
    logits = _random_logits(seed, ties)
    ours = top_p_filter(logits, p)
    assert torch.equal(ours, TopPLogitsWarper(top_p=p, min_tokens_to_keep=1)(None, logits))
    assert (torch.isfinite(ours).sum(-1) >= 1).all(), "at least one token is always kept"


def test_filters_keep_ties_and_the_minimum():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 3)).tolist() == [[True, False, True, True, True, False]]
    assert torch.isfinite(top_k_filter(logits, 1)).tolist() == [[True, False, True, False, False, False]]
    assert int(torch.isfinite(top_p_filter(logits, 1e-9)).sum()) == 1
    probs = logits.softmax(-1)[0]
    kept = torch.isfinite(top_p_filter(logits, 0.6))[0]
    assert float(probs[kept].sum()) > 0.6 and float(probs[kept].sum() - probs[kept].min()) <= 0.6 + 1e-6


def test_none_disables_each_filter():
    logits = _random_logits(0, False)
    for result in (apply_temperature(logits, None), top_k_filter(logits, None), top_p_filter(logits, None)):
        assert result is logits


# --- bad input: a clear ValueError before any forward pass ---

PROMPT = torch.tensor([[5, 6, 7]])
BAD = [
    ("greedy", {"max_new_tokens": 0}, "max_new_tokens"),
    ("greedy", {"max_new_tokens": -3}, "max_new_tokens"),
    ("greedy", {"max_new_tokens": 2.5}, "max_new_tokens"),
    ("sample", {"temperature": 0}, "greedy"),
    ("sample", {"temperature": -1.0}, "greedy"),
    ("sample", {"top_k": 0}, "top_k"),
    ("sample", {"top_k": -5}, "top_k"),
    ("sample", {"top_p": 0.0}, r"\(0, 1\]"),
    ("sample", {"top_p": 1.5}, r"\(0, 1\]"),
    ("greedy", {"input_ids": torch.empty((1, 0), dtype=torch.long)}, "empty"),
    ("sample", {"input_ids": []}, "empty"),
    ("greedy", {"input_ids": PROMPT, "attention_mask": torch.tensor([[0, 0, 0]])}, "empty"),
    ("greedy", {"max_new_tokens": 62}, "context of 64"),
    ("sample", {"input_ids": torch.ones((1, 64), dtype=torch.long), "max_new_tokens": 1}, "context of 64"),
]


@pytest.mark.parametrize(("which", "change", "message"), BAD, ids=[f"{w}-{list(c)[0]}-{i}" for i, (w, c, _) in enumerate(BAD)])
def test_bad_input_raises_before_any_forward_pass(no_forward_model, which, change, message):
    kwargs = {"input_ids": PROMPT, "max_new_tokens": 4, **change}
    fn = greedy_generate if which == "greedy" else sample_generate
    with pytest.raises(ValueError, match=message):
        fn(no_forward_model(max_position_embeddings=64, vocab_size=96), kwargs.pop("input_ids"), kwargs.pop("max_new_tokens"), **kwargs)


def test_context_length_allows_exactly_the_context(tiny_gpt2):
    model = tiny_gpt2
    ids = torch.randint(4, 96, (1, 60))
    assert greedy_generate(model, ids, 4, eos_token_id=[]).shape[1] == 64
    with pytest.raises(ValueError, match="Fix: use max_new_tokens <= 4"):
        greedy_generate(model, ids, 5)


@pytest.mark.parametrize(("fn", "bad"), [(apply_temperature, 0.0), (top_k_filter, 0), (top_p_filter, 0.0),
                                         (top_p_filter, 1.01), (top_k_filter, 2.0)])
def test_filters_reject_bad_parameters(fn, bad):
    with pytest.raises(ValueError, match="Fix"):
        fn(torch.zeros(1, 5), bad)


# --- compare_with_generate ---

@pytest.mark.slow
def test_compare_reports_equal(model, tokenizer):
    batch = _batch(tokenizer, BATCH)
    ours = greedy_generate(model, batch.input_ids, NEW, attention_mask=batch.attention_mask)
    result = compare_with_generate(model, batch.input_ids, ours, attention_mask=batch.attention_mask,
                                   max_new_tokens=NEW, do_sample=False)
    assert result.equal and result.position is None
    assert 0 <= result.max_logit_diff < 1e-2
    assert str(result).startswith("equal to generate")


@pytest.mark.slow
def test_compare_finds_a_perturbed_token(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[0])
    ours = greedy_generate(model, ids, NEW).clone()
    where = ids.shape[1] + 3
    original = int(ours[0, where])
    ours[0, where] = (original + 1) % model.config.vocab_size
    result = compare_with_generate(model, ids, ours, max_new_tokens=NEW, do_sample=False, tokenizer=tokenizer)
    assert not result.equal
    assert (result.row, result.position, result.new_token_index) == (0, where, 3)
    assert (result.ours_token, result.generate_token) == (original + 1, original)
    assert result.gap_at_difference > 0, "generate's greedy token has the larger logit"
    assert result.generate_label == tokenizer.decode([original])
    text = str(result)
    assert f"position {where}" in text and repr(result.generate_label) in text


@pytest.mark.slow
def test_compare_finds_a_different_stop(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[0])
    plain = greedy_generate(model, ids, NEW)
    new = plain[0, ids.shape[1]:].tolist()
    eos = new[1]
    stop = ids.shape[1] + new.index(eos) + 1  # ours ends right after the first time eos comes
    ours = greedy_generate(model, ids, NEW, eos_token_id=eos)
    assert ours.shape[1] == stop
    result = compare_with_generate(model, ids, ours, max_new_tokens=NEW, do_sample=False)
    assert not result.equal
    assert result.position == stop and result.ours_token is None
    assert result.generate_token == int(plain[0, stop])
    assert "(ended)" in str(result)


@pytest.mark.slow
def test_compare_seeded_sampling(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[3])
    ours = sample_generate(model, ids, NEW, temperature=1.5, seed=3)
    same = compare_with_generate(model, ids, ours, seed=3, max_new_tokens=NEW, do_sample=True, temperature=1.5, top_k=0)
    other = compare_with_generate(model, ids, ours, seed=3, max_new_tokens=NEW, do_sample=True, temperature=1.5)
    assert same.equal
    assert not other.equal, "generate's silent top_k=50 changes what is drawn"


# --- compare_with_generate on the loop's own logits (issue 14: it must compare the very loop in question) ---

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_loops_return_the_logits_they_picked_from(tiny_model, arch):
    model = tiny_model(arch)
    ids = torch.tensor([[1, 5, 9, 3], [2, 7, 7, 4]])
    out, logits = greedy_generate(model, ids, 6, eos_token_id=[], return_logits=True)
    assert torch.equal(out, greedy_generate(model, ids, 6, eos_token_id=[]))
    assert logits.shape == (2, 6, model.config.vocab_size)
    assert torch.equal(logits.argmax(-1), out[:, ids.shape[1]:]), "each token is the argmax of its step's logits"
    sampled, sample_logits = sample_generate(model, ids, 6, seed=1, eos_token_id=[], return_logits=True)
    assert torch.equal(sampled, sample_generate(model, ids, 6, seed=1, eos_token_id=[]))
    assert sample_logits.shape == (2, 6, model.config.vocab_size)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("prompt", [[1, 5, 9, 3], [8, 2], [4, 4, 4, 4, 4, 4, 11]])
def test_compare_uses_the_loops_own_logits(tiny_model, arch, prompt):
    """The cached loop's logits are generate's own numbers (difference 0); the uncached loop's are not. The old
    compare_with_generate reported the same figure for both (one recomputed forward pass)."""
    model = tiny_model(arch)
    ids = torch.tensor([prompt])
    cached, cached_logits = greedy_generate(model, ids, 12, eos_token_id=[], return_logits=True)
    uncached, uncached_logits = greedy_generate(model, ids, 12, eos_token_id=[], use_cache=False, return_logits=True)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_cache = compare_with_generate(model, ids, cached, ours_logits=cached_logits, **kwargs)
    without = compare_with_generate(model, ids, uncached, ours_logits=uncached_logits, **kwargs)
    assert with_cache.equal and with_cache.max_logit_diff == 0.0, str(with_cache)
    assert with_cache.logits_from == "your loop" and "0 (exactly)" in str(with_cache)
    assert with_cache.step_logit_diffs.shape == (12,)
    assert torch.equal(without.step_logit_diffs[:1], with_cache.step_logit_diffs[:1]), "step 0 is the same prefill"
    assert without.max_logit_diff == float(without.step_logit_diffs.max())


def test_compare_sees_a_change_in_the_loops_logits(tiny_model):
    model = tiny_model("llama")
    ids = torch.tensor([[1, 5, 9, 3]])
    out, logits = greedy_generate(model, ids, 5, eos_token_id=[], return_logits=True)
    bent = logits.clone()
    bent[0, 2, 7] += 0.25  # the tokens stay the same; the numbers do not
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    result = compare_with_generate(model, ids, out, ours_logits=bent, **kwargs)
    assert result.equal and abs(result.max_logit_diff - 0.25) < 1e-6
    assert int(result.step_logit_diffs.argmax()) == 2
    assert "above 1e-03" in str(result)


def test_compare_rejects_logits_of_the_wrong_shape(tiny_model):
    model = tiny_model("llama")
    ids = torch.tensor([[1, 5, 9, 3]])
    out, logits = greedy_generate(model, ids, 5, eos_token_id=[], return_logits=True)
    with pytest.raises(ValueError, match="Fix: collect"):
        compare_with_generate(model, ids, out, ours_logits=logits[:, :2], max_new_tokens=5, do_sample=False)


def test_compare_rejects_output_without_the_prompt(model, tokenizer):
    ids = _ids(tokenizer, PROMPTS[0])
    with pytest.raises(ValueError, match="prompt included"):
        compare_with_generate(model, ids, ids[:, 1:], max_new_tokens=2)


# --- the exercise checks of notebook 03 ---

def test_check_filter_accepts_the_reference_and_names_the_row():
    from transformers.generation.logits_process import MinPLogitsWarper

    from workshop_utils.checks import CheckFailed, check_filter

    def reference(scores):
        return MinPLogitsWarper(min_p=0.1)(None, scores)

    def right(scores):
        probs = scores.softmax(-1)
        return scores.masked_fill(probs < 0.1 * probs.max(-1, keepdim=True).values, float("-inf"))

    check_filter("min-p", right, reference, "min-p = 0.1")
    with pytest.raises(CheckFailed, match=r"row 0: you kept \d+ tokens, min-p = 0.1 keeps \d+"):
        check_filter("min-p", lambda s: top_k_filter(s, 3), reference, "min-p = 0.1")
    with pytest.raises(CheckFailed, match="probabilities"):
        check_filter("min-p", lambda s: right(s).softmax(-1), reference, "min-p = 0.1")
    with pytest.raises(CheckFailed, match="logits changed"):
        check_filter("min-p", lambda s: right(s) * 2, reference, "min-p = 0.1")


def test_check_kept_count_explains_the_mistakes():
    from workshop_utils.checks import CheckFailed, check_kept_count

    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 2
    right = int(torch.isfinite(top_p_filter(apply_temperature(logits, 0.7), 0.9)).sum())
    check_kept_count("kept", right, logits, 0.7, 0.9)
    no_temperature = int(torch.isfinite(top_p_filter(logits, 0.9)).sum())
    assert no_temperature != right
    with pytest.raises(CheckFailed, match="temperature 1"):
        check_kept_count("kept", no_temperature, logits, 0.7, 0.9)
    with pytest.raises(CheckFailed, match="one token early"):
        check_kept_count("kept", right - 1, logits, 0.7, 0.9)
    with pytest.raises(CheckFailed, match="whole number"):
        check_kept_count("kept", "12", logits, 0.7, 0.9)


@pytest.mark.slow
def test_check_reproduces_sampling_spots_the_hidden_top_k(model, tokenizer):
    from workshop_utils.checks import CheckFailed, check_reproduces_sampling

    ids = _ids(tokenizer, PROMPTS[0])
    kwargs = {"seed": 0, "temperature": 1.0, "max_new_tokens": 12, "tokenizer": tokenizer}
    right = _seeded_generate(model, 0, input_ids=ids, max_new_tokens=12, top_k=0)
    check_reproduces_sampling("ex", right, model, ids, **kwargs)
    plain = _seeded_generate(model, 0, input_ids=ids, max_new_tokens=12)
    assert not torch.equal(plain, right), "seed 0 parts within 12 tokens on this prompt"
    with pytest.raises(CheckFailed, match="top_k=0"):
        check_reproduces_sampling("ex", plain, model, ids, **kwargs)
    with pytest.raises(CheckFailed, match="position"):
        check_reproduces_sampling("ex", _seeded_generate(model, 1, input_ids=ids, max_new_tokens=12, top_k=0),
                                  model, ids, **kwargs)
