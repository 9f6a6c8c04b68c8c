"""workshop_utils.cfg: both CFG paths and the processor equal generate(guidance_scale=...), the blend, the errors."""

from unittest import mock

import pytest
import torch

from workshop_utils.cfg import CFGLogitsProcessor, cfg_generate, cfg_step_scores
from workshop_utils.timing import cache_bytes, measure_cfg_paths, peak_tensor_bytes

PROMPTS = ["The best way to learn to cook is", "My favourite animal is", "Once upon a time, in a small village,",
           "The weather today is", "To fix a flat tyre, you"]
NEGATIVE = "The following text is about football and other sports."
SCALES = (1.5, 3.0)
NEW_TOKENS = 6
# Every prompt at both scales, once with the negative prompt and once with the default (the last prompt token).
CASES = [(p, g, (p + k) % 2 == 1) for p in range(len(PROMPTS)) for k, g in enumerate(SCALES)]


def _case_id(case):
    p, g, n = case
    return f"prompt{p}-g{g}-{'negative' if n else 'last token'}"


def _first_fast(cases, fast=1):
    """The first cases run in `make unit`; the others are marked slow (a generate each on the default model)."""
    return [pytest.param(c, id=_case_id(c), marks=() if i < fast else pytest.mark.slow) for i, c in enumerate(cases)]


@pytest.fixture(scope="module")
def ids(tokenizer):
    """Token ids [1, T] of each prompt and of the negative prompt."""
    return {"prompts": [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS],
            "negative": tokenizer(NEGATIVE, return_tensors="pt").input_ids}


@pytest.fixture(scope="module")
def reference(model, ids):
    """generate(guidance_scale=...)'s greedy output for a case, computed once."""
    done = {}

    def get(case):
        if case not in done:
            p, g, n = case
            with torch.no_grad():
                done[case] = model.generate(ids["prompts"][p], max_new_tokens=NEW_TOKENS, do_sample=False,
                                            guidance_scale=g, negative_prompt_ids=ids["negative"] if n else None)
        return done[case]

    return get


def _args(ids, case):
    p, g, n = case
    return ids["prompts"][p], {"guidance_scale": g, "negative_prompt_ids": ids["negative"] if n else None}


@pytest.mark.parametrize("case", _first_fast(CASES))
def test_two_pass_equals_generate(model, ids, reference, case):
    prompt, kwargs = _args(ids, case)
    assert torch.equal(cfg_generate(model, prompt, NEW_TOKENS, **kwargs), reference(case))


@pytest.mark.parametrize("case", _first_fast(CASES))
def test_batched_equals_generate(model, ids, reference, case):
    prompt, kwargs = _args(ids, case)
    assert torch.equal(cfg_generate(model, prompt, NEW_TOKENS, batched=True, **kwargs), reference(case))


@pytest.mark.parametrize("case", _first_fast(CASES))
def test_processor_equals_generate(model, ids, reference, case):
    prompt, kwargs = _args(ids, case)
    processor = CFGLogitsProcessor(model, kwargs["guidance_scale"], kwargs["negative_prompt_ids"])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, logits_processor=[processor])
    assert torch.equal(out, reference(case))


BATCH_CASES = [(0, 1.5, False), (1, 3.0, True), (2, 3.0, False), (3, 1.5, True)]


@pytest.mark.slow
@pytest.mark.parametrize("case", BATCH_CASES, ids=_case_id)
def test_batched_log_probs_stay_within_1e4_of_two_pass(model, ids, reference, case):
    """One batch of two rows is not bit-identical to two batches of one (other kernels, padding): bound the gap."""
    prompt, kwargs = _args(ids, case)
    continuation = reference(case)[:, prompt.shape[1]:]
    two_pass = cfg_step_scores(model, prompt, continuation, **kwargs)
    batched = cfg_step_scores(model, prompt, continuation, batched=True, **kwargs)
    for branch in ("cond", "uncond"):
        assert (two_pass[branch] - batched[branch]).abs().max() <= 1e-4, branch
    g = kwargs["guidance_scale"]  # guided = g * cond + (1 - g) * uncond: each branch's gap is scaled
    assert (two_pass["guided"] - batched["guided"]).abs().max() <= (abs(g) + abs(1 - g)) * 1e-4


@pytest.mark.slow
def test_step_scores_follow_the_formula(model, ids):
    prompt, negative = ids["prompts"][1], ids["negative"]
    continuation = cfg_generate(model, prompt, 4, guidance_scale=2.0)[:, prompt.shape[1]:]
    scores = cfg_step_scores(model, prompt, continuation, guidance_scale=2.0, negative_prompt_ids=negative)
    expected = scores["uncond"] + 2.0 * (scores["cond"] - scores["uncond"])
    assert torch.allclose(scores["guided"], expected, atol=1e-5)
    assert torch.allclose(scores["cond"].exp().sum(-1), torch.ones(4), atol=1e-4)


@pytest.mark.slow
def test_default_unconditional_branch_is_the_last_prompt_token(model, ids):
    prompt = ids["prompts"][3]
    assert torch.equal(cfg_generate(model, prompt, NEW_TOKENS, guidance_scale=3.0),
                       cfg_generate(model, prompt, NEW_TOKENS, guidance_scale=3.0, negative_prompt_ids=prompt[:, -1:]))


@pytest.mark.slow
@pytest.mark.parametrize("case", [(0, 3.0, True), (1, 3.0, False)], ids=_case_id)
def test_blend_one_is_plain_cfg(model, ids, reference, case):
    prompt, kwargs = _args(ids, case)
    for batched in (False, True):
        assert torch.equal(cfg_generate(model, prompt, NEW_TOKENS, batched=batched, blend=1.0, **kwargs),
                           reference(case))


@pytest.mark.slow
@pytest.mark.parametrize("p", [0, 4])
def test_blend_zero_is_plain_greedy(model, ids, p):
    prompt = ids["prompts"][p]
    with torch.no_grad():
        greedy = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
    for batched in (False, True):
        out = cfg_generate(model, prompt, NEW_TOKENS, guidance_scale=3.0, negative_prompt_ids=ids["negative"],
                           batched=batched, blend=0.0)
        assert torch.equal(out, greedy)


@pytest.mark.slow
def test_blend_halfway_mixes_cfg_and_conditional_scores(model, ids):
    prompt = ids["prompts"][2]
    continuation = cfg_generate(model, prompt, 4, guidance_scale=3.0)[:, prompt.shape[1]:]
    plain = cfg_step_scores(model, prompt, continuation, guidance_scale=3.0)
    half = cfg_step_scores(model, prompt, continuation, guidance_scale=3.0, blend=0.5)
    assert torch.allclose(half["guided"], 0.5 * plain["guided"] + 0.5 * plain["cond"], atol=1e-5)


@pytest.mark.slow
def test_guidance_scale_one_is_plain_greedy_like_generate(model, ids):
    prompt = ids["prompts"][0]
    with torch.no_grad():
        greedy = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, guidance_scale=1.0),
                           greedy)
    for batched in (False, True):
        assert torch.equal(cfg_generate(model, prompt, NEW_TOKENS, guidance_scale=1.0, batched=batched), greedy)


def test_processor_refuses_a_second_generate(model, ids):
    prompt = ids["prompts"][1]
    processor = CFGLogitsProcessor(model, 1.5)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False, logits_processor=[processor])
        with pytest.raises(ValueError, match="make a new one"):
            model.generate(prompt, max_new_tokens=2, do_sample=False, logits_processor=[processor])


BAD_CALLS = [
    ({"guidance_scale": -0.5}, "below 0"),
    ({"guidance_scale": 1.5, "negative_prompt_ids": torch.zeros(1, 0, dtype=torch.long)}, "negative_prompt_ids is empty"),
    ({"guidance_scale": 1.5, "blend": 1.5}, "blend must be"),
    ({"guidance_scale": float("nan")}, "must be a number"),
    ({"guidance_scale": 1.5, "max_new_tokens": 0}, "max_new_tokens"),
    ({"guidance_scale": 1.5, "input_ids": torch.zeros(1, 0, dtype=torch.long)}, "input_ids is empty"),
    ({"guidance_scale": 1.5, "input_ids": torch.ones(2, 3, dtype=torch.long)}, "one prompt"),
    ({"guidance_scale": 1.5, "input_ids": torch.tensor([[1, 10**6]])}, "outside this tokenizer.s vocabulary"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_input_is_refused_before_any_forward_pass(model, ids, kwargs, message):
    kwargs = {"input_ids": ids["prompts"][0], "max_new_tokens": 4, **kwargs}
    prompt, max_new_tokens = kwargs.pop("input_ids"), kwargs.pop("max_new_tokens")
    with mock.patch.object(model, "forward", side_effect=AssertionError("a forward pass ran")):
        for batched in (False, True):
            with pytest.raises(ValueError, match=message):
                cfg_generate(model, prompt, max_new_tokens, batched=batched, **kwargs)


def test_processor_refuses_bad_settings_at_once(model):
    with pytest.raises(ValueError, match="below 0"):
        CFGLogitsProcessor(model, -1.0)
    with pytest.raises(ValueError, match="empty"):
        CFGLogitsProcessor(model, 2.0, negative_prompt_ids=torch.zeros(1, 0, dtype=torch.long))


def test_peak_tensor_bytes_counts_what_is_held_at_once():
    def fn():
        a = torch.ones(250_000)  # 1 MB
        b = torch.ones(500_000)  # 2 MB, with a: 3 MB held
        del a
        c = torch.ones(250_000)  # back to 3 MB, never more
        return b, c

    assert peak_tensor_bytes(fn) == 3_000_000


@pytest.mark.slow
def test_measure_cfg_paths(model, ids):
    prompt = ids["prompts"][0]
    figures = measure_cfg_paths(model, prompt, 4, 1.5, repeats=1)
    assert figures["same_tokens"]
    config = model.config
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4  # keys and values, float32
    cond_positions = prompt.shape[1] + 3  # the last new token is never fed back
    assert figures["two_pass"]["cache_bytes"] == per_position * (cond_positions + 1 + 3)
    assert figures["batched"]["cache_bytes"] == per_position * 2 * cond_positions  # the 1-token row padded
    for path in ("two_pass", "batched"):
        assert figures[path]["peak_bytes"] >= figures[path]["cache_bytes"]
        assert figures[path]["new_tokens"] == 4
        assert figures[path]["prefill_seconds"] > 0 and figures[path]["decode_seconds_per_token"] > 0
    with pytest.raises(ValueError, match="turns guidance off"):
        measure_cfg_paths(model, prompt, 4, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        measure_cfg_paths(model, prompt, 1, 1.5)


def test_cache_bytes_of_an_empty_cache_is_zero(model):
    from transformers import DynamicCache

    assert cache_bytes([DynamicCache(config=model.config)]) == 0


# --- the checks of notebook 06 -----------------------------------------------------------------------

def test_check_cfg_scores_names_the_usual_mistakes():
    from workshop_utils.checks import CheckFailed, check_cfg_scores

    torch.manual_seed(0)
    cond_logits, uncond_logits = torch.randn(1, 50), torch.randn(1, 50)
    cond, uncond = torch.log_softmax(cond_logits, -1), torch.log_softmax(uncond_logits, -1)
    cfg = uncond + 3.0 * (cond - uncond)
    check_cfg_scores("right", cfg, cond_logits, uncond_logits, 3.0)
    check_cfg_scores("right blend", 0.3 * cfg + 0.7 * cond, cond_logits, uncond_logits, 3.0, blend=0.3)
    wrong = [(uncond_logits + 3.0 * (cond_logits - uncond_logits), None, "log-softmax each branch"),
             (cond + 3.0 * (uncond - cond), None, "swapped"),
             (3.0 * cond, None, "not g \\* cond"),
             (0.7 * cfg + 0.3 * cond, 0.3, "wrong way round"),
             (0.3 * cfg + 0.7 * uncond, 0.3, "unconditional scores"),
             (cfg, 0.3, "forgot the blend"),
             (cfg + 1, None, "at index")]
    for answer, blend, message in wrong:
        with pytest.raises(CheckFailed, match=message):
            check_cfg_scores("wrong", answer, cond_logits, uncond_logits, 3.0, blend=blend)


def test_check_padded_rows_names_the_usual_mistakes():
    from workshop_utils.checks import CheckFailed, check_padded_rows

    rows, t = [[5, 6, 7], [1, 2, 3, 4, 5]], torch.tensor
    right = (t([[2, 2, 5, 6, 7], [1, 2, 3, 4, 5]]), t([[0, 0, 1, 1, 1], [1] * 5]), t([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]))
    check_padded_rows("right", *right, rows, 2)
    with pytest.raises(CheckFailed, match="padded on the right"):
        check_padded_rows("right padding", t([[5, 6, 7, 2, 2], [1, 2, 3, 4, 5]]), t([[1, 1, 1, 0, 0], [1] * 5]),
                          t([[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]), rows, 2)
    with pytest.raises(CheckFailed, match=r"position_ids\[0, 1\] is 1, expected 0"):
        check_padded_rows("positions", right[0], right[1], t([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]), rows, 2)
    with pytest.raises(CheckFailed, match="shape"):
        check_padded_rows("shape", right[0][:1], right[1], right[2], rows, 2)
