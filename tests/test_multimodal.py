"""The image splice, checked against transformers' own LLaVA; stage-1 freezing; the shipped weights."""

import shutil

import pytest
import torch
from transformers import AutoTokenizer

from workshop_utils import multimodal as mm
from workshop_utils import multimodal_train as mm_train
from workshop_utils.models import (
    ChecksumError,
    ModelSetupError,
    default_model_dir,
    sha256_of,
)

N_PATCHES = 16


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """A TinyLlava around a small random Llama (a tokenizer of its own, so <image> is a real special token and
    padding sides can change)."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    language_model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                tie_word_embeddings=True, max_position_embeddings=2048)
    return mm.TinyLlava(language_model, tokenizer).eval()


def _batch(model, padding_side):
    """Three prompts holding 0, 1 and 2 images, of different lengths, padded on one side."""
    texts = ["<|im_start|>user\nNo picture here, just words.<|im_end|>\n",
             mm.PROMPT.format(question="What color is the shape?"),
             "<|im_start|>user\n<image> or <image>?<|im_end|>\n"]
    model.tokenizer.padding_side = padding_side
    batch = model.tokenizer(texts, return_tensors="pt", padding=True)
    images = [image for image, _ in mm_train.make_shapes(3, seed=7)]
    return batch.input_ids, batch.attention_mask, mm.pixel_values(images)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_splice_equals_llava_embeddings_and_logits(tiny, padding_side):
    input_ids, attention_mask, pixels = _batch(tiny, padding_side)
    assert int((input_ids == tiny.image_token_id).sum()) == 3
    with torch.no_grad():
        embeds, mask, positions, _ = tiny.merge(input_ids, pixels, attention_mask, padding_side=padding_side)
        ours = tiny.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits

        llava = mm.build_llava(tiny, N_PATCHES)
        long_ids, long_mask = mm.expand_image_tokens(input_ids, attention_mask, tiny.image_token_id, N_PATCHES,
                                                     tiny.tokenizer.pad_token_id, padding_side)
        # LLaVA's own merge: embed every id, then masked_scatter the image features over the placeholders.
        features = torch.cat(llava.model.get_image_features(pixel_values=pixels).pooler_output)
        theirs_embeds = llava.get_input_embeddings()(long_ids)
        placeholder = llava.model.get_placeholder_mask(long_ids, theirs_embeds, features)
        theirs_embeds = theirs_embeds.masked_scatter(placeholder, features)
        theirs = llava(input_ids=long_ids, pixel_values=pixels, attention_mask=long_mask,
                       position_ids=positions).logits

    assert torch.equal(mask, long_mask), "both layouts put real positions in the same places"
    real = mask.bool()
    assert torch.equal(embeds[real], theirs_embeds[real])
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    assert mask.sum(1).tolist() == [int(m.sum()) + (N_PATCHES - 1) * int((i == tiny.image_token_id).sum())
                                    for i, m in zip(input_ids, attention_mask)]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_positions_count_from_zero_on_each_row(tiny, padding_side):
    input_ids, attention_mask, pixels = _batch(tiny, padding_side)
    with torch.no_grad():
        _, mask, positions, _ = tiny.merge(input_ids, pixels, attention_mask, padding_side=padding_side)
    for row_mask, row_positions in zip(mask.bool(), positions):
        n = int(row_mask.sum())
        assert row_positions[row_mask].tolist() == list(range(n))
        first_real = 0 if padding_side == "right" else len(row_mask) - n
        assert row_mask[first_real:first_real + n].all()


def test_caption_labels_keep_the_caption_only(tiny):
    samples = mm_train.make_shapes(2, seed=3)
    captions = [mm_train.caption(a) for _, a in samples]
    input_ids, attention_mask, labels = mm_train.caption_batch(tiny.tokenizer, captions)
    with torch.no_grad():
        _, mask, _, merged = tiny.merge(input_ids, mm.pixel_values([s[0] for s in samples]), attention_mask, labels)
    for row in range(2):
        learned = [t for t in merged[row].tolist() if t != -100]
        assert tiny.tokenizer.decode(learned) == captions[row] + "<|im_end|>"
        assert (merged[row][:N_PATCHES] == -100).all(), "the image positions come first and are not learned"
        assert (merged[row][~mask[row].bool()] == -100).all()
    assert captions[0].startswith("a ") and samples[0][1]["color"] in captions[0].split()


def test_stage2_labels_are_the_assistant_turns_of_notebook_05(tiny):
    images, input_ids, _, labels = mm_train.recipe_batch(tiny.tokenizer, 2, 0, batch_size=3)
    samples = mm_train.make_shapes(3, seed=700_000)
    for row, (_, attributes) in enumerate(samples):
        learned = tiny.tokenizer.decode([t for t in labels[row].tolist() if t != -100])
        assert sorted(learned.split("<|im_end|>")[:2]) == sorted([attributes["color"], attributes["shape"]])
        assert int((input_ids[row] == tiny.image_token_id).sum()) == 1, "the image sits in the first user turn"
    assert len(images) == 3


def test_no_labels_in_no_labels_out(tiny):
    input_ids, attention_mask, pixels = _batch(tiny, "right")
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    with torch.no_grad():
        without = tiny.merge(input_ids, pixels, attention_mask)
        with_labels = tiny.merge(input_ids, pixels, attention_mask, labels)
    assert without[3] is None and with_labels[3].shape == with_labels[1].shape
    for name, a, b in zip(["embeds", "mask", "positions"], without[:3], with_labels[:3]):
        assert torch.equal(a, b), f"the labels changed the {name}"


def test_a_row_without_image_is_just_its_text_embeddings(tiny):
    ids = tiny.tokenizer(["<|im_start|>user\nhello<|im_end|>"], return_tensors="pt").input_ids
    embeds, mask, positions, _ = mm.merge_image_features(ids, tiny.language_model.get_input_embeddings(), [],
                                                         tiny.image_token_id)
    assert torch.equal(embeds[0], tiny.language_model.get_input_embeddings()(ids[0]))
    assert mask.tolist() == [[1] * ids.shape[1]] and positions.tolist() == [list(range(ids.shape[1]))]


class _NoEmbedding(torch.nn.Embedding):
    def forward(self, ids):
        raise AssertionError("embedded before checking the counts")


@pytest.mark.parametrize("n_images", [1, 3])
def test_placeholder_and_image_counts_must_agree(tiny, n_images):
    input_ids, attention_mask, _ = _batch(tiny, "right")  # 3 placeholders
    features = [torch.zeros(N_PATCHES, 64)] * (n_images if n_images != 3 else 2)
    with pytest.raises(ValueError, match=r"3 image placeholder.*\b2\b image.*Fix:" if n_images == 3 else
                       r"3 image placeholder.*\b1\b image.*Fix:"):
        mm.merge_image_features(input_ids, _NoEmbedding(10, 64), features, tiny.image_token_id,
                                attention_mask=attention_mask)


def test_unprojected_features_are_refused(tiny):
    input_ids, attention_mask, pixels = _batch(tiny, "right")
    with torch.no_grad(), pytest.raises(ValueError, match=r"width 128 .* 64\. Fix: .*connector"):
        mm.merge_image_features(input_ids, _NoEmbedding(10, 64), tiny.image_features(pixels),
                                tiny.image_token_id, attention_mask=attention_mask)


def test_bad_padding_side_is_refused(tiny):
    input_ids, attention_mask, _ = _batch(tiny, "right")
    with pytest.raises(ValueError, match="padding_side"):
        mm.merge_image_features(input_ids, _NoEmbedding(10, 64), [], 0, padding_side="middle")


@pytest.mark.parametrize("stage", [1, 2])
def test_both_stages_train_the_connector_only(tiny, stage):
    before = {name: p.detach().clone() for name, p in tiny.named_parameters()}
    losses = mm_train.train_connector(tiny, stage, steps=2, batch_size=2, seed=0)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    changed = {name for name, p in tiny.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name in before if name.startswith("connector.")}
    trainable = {name for name, p in tiny.named_parameters() if p.requires_grad}
    assert trainable == changed
    assert "Total Trainable Parameters: 12,416" in tiny.parameter_log()  # 128*64 + 64 + 64*64 + 64


def test_make_shapes_is_deterministic_and_varied():
    a, b = mm_train.make_shapes(30, seed=1), mm_train.make_shapes(30, seed=1)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert torch.equal(mm.pixel_values([x[0] for x in a]), mm.pixel_values([x[0] for x in b]))
    assert [x[1] for x in mm_train.make_shapes(30, seed=2)] != [x[1] for x in a]
    assert {x[1]["color"] for x in a} <= set(mm_train.COLORS) and len({x[1]["shape"] for x in a}) == len(mm_train.SHAPES)
    assert a[0][0].size == (64, 64)


def test_shipped_weights_match_their_recorded_sha256():
    assert mm.WEIGHTS_FILE.stat().st_size < 10_000_000
    recorded = mm.WEIGHTS_FILE.with_suffix(".sha256").read_text().split()
    assert recorded == [sha256_of(mm.WEIGHTS_FILE), mm.WEIGHTS_FILE.name]


def test_tampered_weights_are_refused(tiny, tmp_path):
    copy = tmp_path / mm.WEIGHTS_FILE.name
    shutil.copy(mm.WEIGHTS_FILE, copy)
    shutil.copy(mm.WEIGHTS_FILE.with_suffix(".sha256"), copy.with_suffix(".sha256"))
    with open(copy, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ChecksumError, match="sha256.*Fix"):
        mm.load_weights(tiny, copy)
    copy.with_suffix(".sha256").unlink()
    with pytest.raises(ModelSetupError, match=r"tinyllava_shapes\.sha256 is missing\. Fix"):
        mm.load_weights(tiny, copy)


@pytest.mark.slow
def test_shipped_model_sees_the_image():
    """The causal evaluation on the shipped weights: the real image beats every baseline by far."""
    result = mm_train.evaluate(mm.load_tinyllava(), n=40, seed=2024)
    rows = {row["condition"]: row for row in mm_train.accuracy_rows(result)}
    for task in mm_train.QUESTIONS:
        real = rows["real image"][task][2]
        assert real >= 75, (task, real)
        for baseline in ("blank image", "shuffled images", "text only", "chance: most frequent answer"):
            assert rows[baseline][task][2] <= real - 30, (task, baseline, rows[baseline][task], real)


# --- the causal evaluation, on a model that reads the colour straight from the pixels ----------------

class _ColourTower(torch.nn.Module):
    """Every patch feature holds the mean colour of the image's coloured pixels (zero where there are none)."""

    def forward(self, pixels):
        from transformers.modeling_outputs import BaseModelOutput

        coloured = (pixels.amax(1) - pixels.amin(1) > 0.3).unsqueeze(1)  # [images, 1, h, w]
        mean = (pixels * coloured).sum((2, 3)) / coloured.sum((2, 3)).clamp(min=1)  # [images, 3]
        features = torch.zeros(len(pixels), N_PATCHES, 8)
        features[:, :, :3] = mean.unsqueeze(1)
        return BaseModelOutput(last_hidden_state=features, hidden_states=(features,))


class _ColourReader(torch.nn.Module):
    """A 'language model' whose next-token logits favour the colour word nearest the image features' colour."""

    def __init__(self, tokenizer):
        super().__init__()
        self.embed = torch.nn.Embedding(len(tokenizer) + 1, 8).requires_grad_(False)
        self.embed.weight.zero_()  # text adds nothing: only the image positions carry a colour
        self.colour_ids = mm_train.answer_token_ids(tokenizer, "color")
        self.colours = torch.tensor([mm_train.COLORS[c] for c in mm_train.ANSWERS["color"]]) / 127.5 - 1
        self.calls = []

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, attention_mask, position_ids, logits_to_keep=0):
        from transformers.modeling_outputs import CausalLMOutput

        self.calls.append(int(attention_mask.sum(1).max()))
        rgb = inputs_embeds[:, :, :3].sum(1) / N_PATCHES
        logits = torch.zeros(len(inputs_embeds), 1, self.embed.num_embeddings)
        logits[:, 0, self.colour_ids] = -torch.cdist(rgb, self.colours)
        return CausalLMOutput(logits=logits)


@pytest.fixture(scope="module")
def colour_reader():
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    return mm.TinyLlava(_ColourReader(tokenizer), tokenizer, vision_tower=_ColourTower(),
                        connector=torch.nn.Identity())


def test_baselines_are_what_they_say(colour_reader):
    samples = mm_train.make_shapes(60, seed=11)
    result = mm_train.evaluate(colour_reader, samples=samples, batch_size=16)
    truth = [a["color"] for _, a in samples[0::2]]  # the colour questions are the even images
    assert result["truth"]["color"] == truth and result["images"]["color"] == list(range(0, 60, 2))
    predicted = result["predicted"]
    assert predicted["real image"]["color"] == truth, "the reader names every colour from its own image"
    permutation = result["permutation"]["color"]
    assert sorted(permutation) == list(range(30)) and all(j != i for i, j in enumerate(permutation))
    assert predicted["shuffled images"]["color"] == [truth[j] for j in permutation]
    for constant in ("blank image", "text only"):
        assert len(set(predicted[constant]["color"])) == 1, f"{constant}: one input, one answer"
    rows = {row["condition"]: row for row in mm_train.accuracy_rows(result)}
    real, shuffled = rows["real image"]["color"], rows["shuffled images"]["color"]
    assert real[:3] == (30, 30, 100.0)
    assert shuffled[0] == sum(truth[j] == t for j, t in zip(permutation, truth)) and shuffled[2] <= 50
    frequent = max(mm_train.ANSWERS["color"], key=truth.count)
    assert rows["chance: most frequent answer"]["color"][0] == truth.count(frequent)
    assert rows["chance: uniform guess"]["color"][2] == pytest.approx(100 / 6)
    for row in rows.values():
        _, _, accuracy, low, high = row["color"]
        assert low is None or low <= accuracy <= high


def test_text_only_has_no_image_positions(colour_reader):
    colour_reader.language_model.calls.clear()
    mm_train.answer_logits(colour_reader, "What color is the shape?", None)
    prompt = mm.PROMPT.format(question="What color is the shape?").replace("<image>\n", "")
    assert colour_reader.language_model.calls == [len(colour_reader.tokenizer(prompt).input_ids)]
    assert "<image>" not in prompt


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_moves_every_item(n):
    for seed in range(5):
        order = mm_train.derangement(n, seed)
        assert sorted(order) == list(range(n)) and all(j != i for i, j in enumerate(order))
    with pytest.raises(ValueError, match="Fix"):
        mm_train.derangement(1)


def test_confusion_and_wrong_answers_count_the_same_mistakes(colour_reader):
    result = mm_train.evaluate(colour_reader, samples=mm_train.make_shapes(20, seed=5), batch_size=16)
    wrong = mm_train.wrong_answers(result)
    assert all(task == "shape" for _, task, _, _ in wrong), "the reader never misses a colour"
    shape_right = sum(t == p for t, p in zip(result["truth"]["shape"], result["predicted"]["real image"]["shape"]))
    assert len(wrong) == 10 - shape_right
    text = str(mm_train.confusion(result, "color"))
    assert text.splitlines()[0].split()[:3] == ["true", "color", "\\"]


def test_training_command_is_multimodal_train(capsys):
    with pytest.raises(SystemExit) as done:
        mm_train.main(["--help"])
    assert done.value.code == 0
    assert "usage: python -m workshop_utils.multimodal_train [-h] {train,eval}" in capsys.readouterr().out


def test_stage_must_be_1_or_2(tiny):
    with pytest.raises(ValueError, match="stage.*Fix"):
        mm_train.recipe_batch(tiny.tokenizer, 3, 0)
    with pytest.raises(ValueError, match="stage.*Fix"):
        mm.load_weights(tiny, mm.WEIGHTS_FILE, stage=0)


def test_saved_weights_load_back_and_nothing_half_written_is_left(tiny, tmp_path):
    path = tmp_path / "weights.safetensors"
    digest = mm.save_weights(tiny, path, {"seed": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors", "weights.sha256"]
    assert path.with_suffix(".sha256").read_text().split() == [digest, path.name] and sha256_of(path) == digest
    before = {k: v.clone() for k, v in tiny.connector.state_dict().items()}
    with torch.no_grad():
        tiny.connector[0].weight.zero_()
    assert mm.load_weights(tiny, path) == {"seed": "3"}
    assert all(torch.equal(v, tiny.connector.state_dict()[k]) for k, v in before.items())
