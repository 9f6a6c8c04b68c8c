"""Issue 24's list of bad inputs: each is a clear error that names the fix, raised before any forward pass (the model
stand-ins fail the test if they run), or the right result where a real library would simply handle it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from workshop_utils import models, timing
from workshop_utils import multimodal as mm
from workshop_utils import multimodal_train as mm_train
from workshop_utils.cfg import cfg_generate
from workshop_utils.checks import check_cfg_scores, check_first_correct_position, check_padded_rows
from workshop_utils.generation import compare_with_generate, greedy_generate, sample_generate
from workshop_utils.tokens import check_messages, token_id_rows

VOCAB, CONTEXT = 96, 64


@pytest.fixture
def stand_in(no_forward_model):
    return no_forward_model(vocab_size=VOCAB, max_position_embeddings=CONTEXT)


@pytest.fixture
def tiny(tiny_model):
    model = tiny_model("llama", vocab_size=VOCAB)
    model.generation_config.eos_token_id = None  # run the full length: nothing stops early
    model.generation_config.pad_token_id = 0
    return model


def forward_count(model) -> list:
    """A list that grows by one at every forward pass of model (a hook)."""
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    return calls


class FakeEncoding(dict):
    """What tokenizer(text, return_tensors='pt') returns, for the mapping part the normaliser reads."""


# --- token ids: one normaliser --------------------------------------------------------------------

@pytest.mark.parametrize("ids, fix", [
    ([[5, VOCAB]], "outside this tokenizer's vocabulary.*Fix: pass ids made by this model's own tokenizer"),
    ([[-1, 3]], "Token id -1 is outside.*Fix"),
    ("Once upon a time", "is a string.*Fix: tokenize it first"),
    ([[1, 2, 3], [4, 5]], "different lengths. Fix: pad them"),
    (FakeEncoding(input_ids=torch.tensor([[1, 2], [0, 3]]), attention_mask=torch.tensor([[1, 1], [0, 1]])),
     "padded batch.*Fix: pass input_ids=enc.input_ids and attention_mask="),
    ({"ids": [1, 2]}, "without 'input_ids'.*Fix"),
    (object(), "must be token ids, got object. Fix"),
    ([[0.5, 1.0]], "must be integers.*Fix"),
])
@pytest.mark.parametrize("loop", [greedy_generate, sample_generate])
def test_bad_ids_to_the_loops(stand_in, loop, ids, fix):
    with pytest.raises(ValueError, match=fix):
        loop(stand_in, ids, 4)


@pytest.mark.parametrize("kind", ["list", "1-D", "2-D", "BatchEncoding", "numpy"])
def test_what_a_learner_naturally_passes_is_accepted(tiny, kind):
    row = [3, 17, 42, 8]
    given = {"list": row, "1-D": torch.tensor(row), "2-D": torch.tensor([row]), "numpy": np.array([row]),
             "BatchEncoding": FakeEncoding(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, 4))}[kind]
    assert torch.equal(token_id_rows(given), torch.tensor([row]))
    assert torch.equal(greedy_generate(tiny, given, 5), greedy_generate(tiny, torch.tensor([row]), 5))


def test_a_real_batch_encoding_is_accepted(tokenizer):
    encoding = tokenizer("The capital of France is", return_tensors="pt")
    assert torch.equal(token_id_rows(encoding), encoding.input_ids)


@pytest.mark.parametrize("kwargs, fix", [
    (dict(eos_token_id="2"), "eos_token_id must be a token id.*Fix: pass tokenizer.eos_token_id"),
    (dict(eos_token_id=[2, "3"]), "eos_token_id must be a token id"),
    (dict(seed="abc"), "seed must be a whole number.*Fix: seed=0"),
    (dict(temperature=float("inf")), "finite number above 0.*Fix"),
    (dict(temperature=float("nan")), "finite number above 0.*Fix"),
])
def test_bad_sampling_arguments(stand_in, kwargs, fix):
    with pytest.raises(ValueError, match=fix):
        sample_generate(stand_in, [[1, 2, 3]], 4, **kwargs)


def test_guidance_scale_inf(stand_in):
    with pytest.raises(ValueError, match="guidance_scale must be a number \\(finite\\).*Fix"):
        cfg_generate(stand_in, [[1, 2, 3]], 4, guidance_scale=float("inf"))


def test_right_padded_mask_is_refused(stand_in):
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])  # left-padded ids...
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # ...with a right-padded mask
    with pytest.raises(ValueError, match="right padding.*Fix: tokenizer.padding_side = 'left'"):
        greedy_generate(stand_in, ids, 4, attention_mask=mask)
    with pytest.raises(ValueError, match="right padding"):
        sample_generate(stand_in, ids, 4, attention_mask=mask)


def test_a_left_padded_mask_still_runs(tiny):
    calls = forward_count(tiny)
    greedy_generate(tiny, torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]), 2,
                    attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    assert len(calls) == 2


def test_a_prompt_that_fills_the_context_names_a_possible_fix(stand_in):
    with pytest.raises(ValueError, match=f"Fix: shorten the prompt to at most {CONTEXT - 1} tokens") as caught:
        greedy_generate(stand_in, [list(range(CONTEXT))], 1)
    assert "<= 0" not in str(caught.value)


def test_compare_with_generate_without_max_new_tokens(tiny):
    prompt = torch.tensor([[3, 17, 42, 8]])
    ours = greedy_generate(tiny, prompt, 30)  # longer than generate's default max_length of 20
    assert compare_with_generate(tiny, prompt, ours).equal


# --- models ---------------------------------------------------------------------------------------

def _forbid_loading(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize("device", ["gpu", "GPU:0", 3.5])
def test_unknown_device(monkeypatch, device):
    _forbid_loading(monkeypatch)
    with pytest.raises(ValueError, match="not a device torch knows. Fix: use 'auto', 'cpu', 'cuda'"):
        models.load_model(device=device)


def test_model_name_that_is_not_a_string(monkeypatch):
    _forbid_loading(monkeypatch)
    with pytest.raises(TypeError, match="must be a string, got int.*Fix: call load_model"):
        models.load_model(135)


def test_folder_that_is_not_a_model(monkeypatch, tmp_path):
    _forbid_loading(monkeypatch)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(models.ModelSetupError, match="holds no model.*Fix: pass a folder written by save_pretrained"):
        models.load_model(str(tmp_path))


# --- timing helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, fix", [
    (lambda m: timing.prefill_seconds(m, []), "input_ids is empty.*Fix"),
    (lambda m: timing.prefill_seconds(m, [[1, 2], [3, 4]]), "Expected one sequence.*Fix"),
    (lambda m: timing.greedy_step_seconds(m, torch.tensor([]), 4, use_cache=True), "empty.*Fix"),
    (lambda m: timing.greedy_step_seconds(m, [1, 2], 2.5, use_cache=True), "n_tokens must be at least 1, a whole number.*Fix"),
    (lambda m: timing.prefill_then_decode(m, [1, 2], 2.5), "n_tokens must be at least 1, a whole number"),
    (lambda m: timing.decode_seconds_per_token(m, [1, 2], 2.5), "n_tokens must be at least 1, a whole number"),
    (lambda m: timing.prefill_decode_sweep(m, [1, 2, 3, 4], [2], n_tokens=2.5), "n_tokens must be at least 1, a whole number"),
    (lambda m: timing.prefill_decode_sweep(m, [], [2]), "empty.*Fix"),
    (lambda m: timing.step_seconds_sweep(m, [1, 2, 3, 4], [0]), "lengths must be positive.*Fix"),
    (lambda m: timing.passage_ids(None, 2.5), "n_tokens must be at least 1, a whole number"),
])
def test_bad_timing_inputs(stand_in, call, fix):
    with pytest.raises(ValueError, match=fix):
        call(stand_in)


def test_timing_takes_1d_ids(tiny, counting_model):
    counted = counting_model(tiny)
    timing.prefill_seconds(counted, [3, 17, 42], repeats=1)
    assert counted.fed == [3, 3]  # the warm-up and one timed pass, over the 3 positions
    assert len(timing.greedy_step_seconds(tiny, torch.tensor([3, 17, 42]), 2, use_cache=True)) == 2


# --- the checks' own inputs -----------------------------------------------------------------------

def test_checks_refuse_inputs_they_cannot_judge():
    with pytest.raises(ValueError, match="at least one row.*Fix"):
        check_padded_rows("rows", torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, 0), [], 0)
    with pytest.raises(ValueError, match="do not match 3 input ids.*Fix: pass model\\(input_ids\\).logits"):
        check_first_correct_position("first", 0, torch.zeros(1, 5, 10), [[1, 2, 3]], None)
    with pytest.raises(ValueError, match="must be non-empty and of one shape.*Fix"):
        check_cfg_scores("cfg", torch.zeros(1, 10), torch.zeros(1, 10), torch.zeros(1, 9), 1.5)


# --- images ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, fix", [("shape.png", "Expected a PIL image, got str.*Fix: open the file first"),
                                      (np.zeros((64, 64, 3)), "must be uint8.*Fix")])
def test_images_that_are_not_images(bad, fix):
    with pytest.raises(ValueError, match=fix):
        mm.pixel_values([bad])


@pytest.mark.parametrize("images", [[], "shape.png", Image.new("RGB", (64, 64))])
def test_answer_needs_a_list_of_images_before_the_model_runs(images):
    never = SimpleNamespace()  # has no tokenizer nor model: anything past the check would fail differently
    with pytest.raises(ValueError, match="non-empty list of images.*Fix: pass \\[image\\]"):
        mm.TinyLlava.answer(never, images, "What color is the shape?")


def test_accuracy_on_zero_images():
    with pytest.raises(ValueError, match="at least 2.*Fix: for example n=200"):
        mm_train.evaluate(SimpleNamespace(), n=0)


def _shape(size=64):
    return mm_train.make_shapes(1, seed=7, image_size=size)[0][0]


def test_numpy_images_are_converted_like_pil():
    image = _shape()
    assert torch.equal(mm.pixel_values([np.asarray(image)]), mm.pixel_values([image]))


def test_16_bit_images_are_scaled_not_clipped():
    gray = _shape().convert("L")
    sixteen = Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).convert("I;16")
    assert sixteen.mode == "I;16"
    assert torch.equal(mm.pixel_values([sixteen]), mm.pixel_values([gray]))


@pytest.mark.parametrize("size", [2, 32, 256])
def test_other_sizes_are_resized_to_what_the_tower_was_trained_on(size):
    pixels = mm.pixel_values([_shape(size), _shape()])
    assert pixels.shape == (2, 3, mm.IMAGE_SIZE, mm.IMAGE_SIZE)
    if size == 256:  # the same drawing at 4x the size comes out close to the 64x64 one
        assert float((pixels[0] - pixels[1]).abs().mean()) < 0.05


@pytest.mark.slow
def test_the_shipped_model_answers_resized_images_like_native_ones():
    model = mm.load_tinyllava()
    samples = mm_train.make_shapes(12, seed=2024)
    big = mm_train.make_shapes(12, seed=2024, image_size=256)
    for task in ("color", "shape"):
        truth = [a[task] for _, a in samples]
        replies = model.answer([image for image, _ in big], mm_train.QUESTIONS[task])
        assert sum(mm_train.first_word(r) == t for r, t in zip(replies, truth)) >= 10, (task, replies)


# --- chat -----------------------------------------------------------------------------------------

def test_one_role_validator_for_render_and_turn(tokenizer, stand_in):
    from workshop_utils.chat import chat_turn
    from workshop_utils.tokens import render_chat

    robot = [{"role": "robot", "content": "beep"}]
    for call in (lambda: check_messages(robot), lambda: render_chat(tokenizer, robot),
                 lambda: chat_turn(stand_in, tokenizer, robot)):
        with pytest.raises(ValueError, match="role 'robot', which chat templates do not know: use one of 'system', 'user'"):
            call()
