"""workshop_utils.cfg: both CFG paths and the processor equal generate(guidance_scale=...), the blend, the errors."""

from unittest import mock

import pytest
import torch

from workshop_utils.cfg import CFGLogitsProcessor, cfg_generate, cfg_step_scores, guide
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
    bumped = cfg.clone()
    bumped[0, 7] += 1  # one score off: no constant per row explains it
    wrong = [(cond + 3.0 * (uncond - cond), None, "swapped"),
             (3.0 * cond, None, "not g \\* cond"),
             (0.7 * cfg + 0.3 * cond, 0.3, "wrong way round"),
             (0.3 * cfg + 0.7 * uncond, 0.3, "unconditional scores"),
             (cfg, 0.3, "forgot the blend"),
             (bumped, None, r"index \(0, 7\)")]
    for answer, blend, message in wrong:
        with pytest.raises(CheckFailed, match=message):
            check_cfg_scores("wrong", answer, cond_logits, uncond_logits, 3.0, blend=blend)


def _seed_003_cfg(cond_logits, uncond_logits, g, blend=0.7):
    """CFG as seed 003 writes it: log-softmax both branches, guide, log-softmax again, blend 0.7/0.3 with cond."""
    cond, uncond = torch.log_softmax(cond_logits, -1), torch.log_softmax(uncond_logits, -1)
    guided = torch.log_softmax(uncond + g * (cond - uncond), -1)
    return blend * guided + (1 - blend) * cond


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_check_cfg_scores_accepts_the_seed_003_form(tiny_model, arch):
    """A second log-softmax only adds one constant per row: the same distribution, so the check accepts it."""
    from workshop_utils.checks import CheckFailed, check_cfg_scores

    tiny = tiny_model(arch)
    prompts = [torch.tensor([[5, 9, 3, 17]]), torch.tensor([[40, 2, 2, 8, 30, 11]])]
    for ids in prompts:
        with torch.no_grad():
            cond_logits, uncond_logits = tiny(ids).logits[:, -1], tiny(ids[:, -1:]).logits[:, -1]
        for g in (1.5, 3.0):
            seed = _seed_003_cfg(cond_logits, uncond_logits, g)
            kit = guide(cond_logits, uncond_logits, g, blend=0.7)
            assert not torch.allclose(seed, kit, atol=1e-3)  # the raw values differ ...
            assert torch.allclose(torch.softmax(seed, -1), torch.softmax(kit, -1), atol=1e-6)  # ... not the probabilities
            check_cfg_scores("seed 003", seed, cond_logits, uncond_logits, g, blend=0.7)
            check_cfg_scores("seed 003 without the blend", _seed_003_cfg(cond_logits, uncond_logits, g, blend=1.0),
                             cond_logits, uncond_logits, g)
            with pytest.raises(CheckFailed, match="wrong way round"):  # still strict on what changes the distribution
                check_cfg_scores("seed 003, blend reversed", _seed_003_cfg(cond_logits, uncond_logits, g, blend=0.3),
                                 cond_logits, uncond_logits, g, blend=0.7)


def test_check_cfg_scores_accepts_the_seed_003_form_on_the_default_model(model, ids):
    from workshop_utils.checks import check_cfg_scores

    for prompt in ids["prompts"][:3]:
        with torch.no_grad():
            cond_logits, uncond_logits = model(prompt).logits[:, -1], model(prompt[:, -1:]).logits[:, -1]
        check_cfg_scores("seed 003", _seed_003_cfg(cond_logits, uncond_logits, 3.0), cond_logits, uncond_logits, 3.0,
                         blend=0.7)


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


# --- where generate puts the user's processors ---------------------------------------------------------

def test_user_processor_runs_after_the_built_in_processors_and_before_the_sampling_warpers(tiny_model):
    """_get_logits_processor (transformers 5.23): built-in processors, then the user's, then the warpers."""
    from transformers import LogitsProcessor

    class Recorder(LogitsProcessor):
        def __call__(self, input_ids, scores):
            self.scores = scores.clone()
            return scores

    model, prompt = tiny_model("llama"), torch.tensor([[3, 14, 15, 9, 2]])
    recorder = Recorder()
    torch.manual_seed(0)
    model.generate(prompt, max_new_tokens=1, do_sample=True, temperature=0.5, top_k=3, suppress_tokens=[7],
                   logits_processor=[recorder], pad_token_id=0)
    with torch.no_grad():
        logits = model(prompt).logits[:, -1]
    received = recorder.scores
    assert torch.isinf(received).nonzero()[:, 1].tolist() == [7]  # suppress_tokens ran before; top-k (3) not yet
    assert torch.allclose(received[:, :7], logits[:, :7], atol=1e-5)  # not divided by the temperature yet
    assert torch.allclose(received[:, 8:], logits[:, 8:], atol=1e-5)


# --- CFG with a padded batch of unconditional branches ---------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_processor_with_a_padded_batch_of_negative_prompts_equals_each_row_alone(tiny_model, arch):
    """Left padding on both branches: each row's positions count from its first real token, as alone."""
    model = tiny_model(arch)
    prompts = [[5, 9, 3, 17, 8], [40, 2]]
    negatives = [[11, 12], [30, 31, 32, 33, 34, 35]]

    def left_pad(rows, pad=0):
        width = max(map(len, rows))
        return (torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
                torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]))

    (ids, mask), (neg, neg_mask) = left_pad(prompts), left_pad(negatives)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_scores=True,
                    return_dict_in_generate=True)
    with torch.no_grad():
        together = model.generate(ids, attention_mask=mask, **settings,
                                  logits_processor=[CFGLogitsProcessor(model, 2.0, neg,
                                                                       negative_attention_mask=neg_mask)])
        for r, (p, n) in enumerate(zip(prompts, negatives)):
            alone = model.generate(torch.tensor([p]), guidance_scale=2.0, negative_prompt_ids=torch.tensor([n]),
                                   **settings)
            assert together.sequences[r, -5:].tolist() == alone.sequences[0, -5:].tolist(), r
            for step, (ours, theirs) in enumerate(zip(together.scores, alone.scores)):
                assert torch.allclose(ours[r], theirs[0], atol=1e-4), (r, step)


def test_processor_refuses_a_mask_of_another_shape(model):
    with pytest.raises(ValueError, match="shape of negative_prompt_ids"):
        CFGLogitsProcessor(model, 2.0, torch.ones(2, 3, dtype=torch.long),
                           negative_attention_mask=torch.ones(2, 4, dtype=torch.long))


# --- the negative prompt, credited only with what it does itself ------------------------------------------

def test_negative_prompt_check_fails_without_the_negative_prompt(model, tokenizer):
    """Notebook 06's check: with the dog negative prompt it passes; with the last token as 'negative prompt' it fails."""
    from workshop_utils.checks import CheckFailed, check_negative_prompt

    animal = tokenizer("My favourite animal is the", return_tensors="pt").input_ids
    dog = tokenizer("I love dogs. My favourite animal is the", return_tensors="pt").input_ids
    dog_words = sorted({tokenizer(w, add_special_tokens=False).input_ids[0]
                        for w in (" dog", " dogs", " puppy", " Dog", " puppies")})
    check_negative_prompt("dogs", model, animal, dog, dog_words, 1.5)
    with pytest.raises(CheckFailed, match="no more than guidance alone"):
        check_negative_prompt("no negative prompt", model, animal, animal[:, -1:], dog_words, 1.5)

    def p_dogs(g, uncond_ids):  # the old check compared g = 3 with plain decoding: it passed with no negative prompt
        with torch.no_grad():
            scores = guide(model(animal).logits[:, -1], model(uncond_ids).logits[:, -1], g)
        return torch.softmax(scores, -1)[0, dog_words].sum().item()

    assert p_dogs(3.0, animal[:, -1:]) < p_dogs(1.0, animal[:, -1:])


# --- does guidance help? an instruction as the condition ----------------------------------------------

def test_the_rules_read_replies_as_they_say():
    from workshop_utils.cfg import all_capitals, broken, one_word

    assert [one_word(r) for r in ("Paris.", "  Mars", "gold-coloured", "Paris is", "", "The answer is Paris")] == \
        [True, True, True, False, False, False]
    assert [all_capitals(r) for r in ("PARIS.", "THE SKY IS BLUE", "Paris", "", "42")] == [True, True, False, False, False]
    assert [broken(r) for r in ("", '..."', "Mars", "42")] == [True, True, False, True]


def test_the_branches_differ_only_by_the_instruction(tokenizer):
    from workshop_utils.cfg import instruction_inputs

    cond, uncond = instruction_inputs(tokenizer, ["What is 2 + 3?", "Name a colour."], "Answer in one word.")
    for c, u, cm, um in zip(cond.input_ids, uncond.input_ids, cond.attention_mask, uncond.attention_mask):
        c_text, u_text = tokenizer.decode(c[cm.bool()]), tokenizer.decode(u[um.bool()])
        assert "Answer in one word." in c_text and "Answer in one word." not in u_text
        assert c_text.endswith(u_text[u_text.index("<|im_start|>user"):])
    with pytest.raises(ValueError, match="instruction is empty"):
        instruction_inputs(tokenizer, ["What is 2 + 3?"], " ")


@pytest.mark.slow
def test_instruction_replies_at_g_1_are_plain_greedy_with_the_instruction(model, tokenizer):
    from workshop_utils.cfg import instruction_replies
    from workshop_utils.chat import chat_turn

    question, instruction = "What do bees make?", "Answer with one word only."
    alone = chat_turn(model, tokenizer, [{"role": "system", "content": instruction},
                                         {"role": "user", "content": question}], max_new_tokens=6)
    assert instruction_replies(model, tokenizer, [question, "Which animal barks?"], instruction, 1.0,
                               max_new_tokens=6)[0] == alone
