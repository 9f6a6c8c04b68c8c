"""A TinyLLaVA-style multimodal model from parts: vision encoder, connector, frozen language model.

The model, the splice of image features into the prompt, and the processor (prompt and pixels) live here;
the synthetic world, the two training stages and the causal evaluation are in multimodal_train.py
(python -m workshop_utils.multimodal_train {train,eval}).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .chat import IGNORE_INDEX
from .generation import check_max_new_tokens

IMAGE_TOKEN = "<image>"
# One user turn in SmolLM2's chat format, without the default system prompt the template would add: the
# format the shipped connector was trained and is evaluated on.
PROMPT = "<|im_start|>user\n" + IMAGE_TOKEN + "\n{question}<|im_end|>\n<|im_start|>assistant\n"
SYSTEM = "Be brief."  # stage 2's conversations carry this short system turn (the template's default is longer)
# What the chat template renders for that system turn and one user turn: the prompt of a stage-2 connector.
CHAT_PROMPT = "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n" + PROMPT
TRAIN_COMMAND = "python -m workshop_utils.multimodal_train train"

DATA_DIR = Path(__file__).parent / "data"
WEIGHTS_FILE = DATA_DIR / "tinyllava_shapes.safetensors"
VISION_HIDDEN = 128


# --- the processor: prompt and pixels ------------------------------------------------------------

IMAGE_SIZE = 64  # the side the vision tower was trained on; other sizes are resized, as an image processor does


def as_rgb_image(image) -> Image.Image:
    """One image as an RGB PIL image of IMAGE_SIZE x IMAGE_SIZE: numpy arrays and 16-bit or other modes are
    converted, other sizes resized (bicubic), like transformers' image processors; anything else is refused."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"A numpy image must be uint8 of shape [height, width] or [height, width, 3], got "
                             f"{image.dtype} of shape {image.shape}. Fix: (array * 255).astype('uint8') for 0-1 floats.")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"Expected a PIL image, got {type(image).__name__} {str(image)[:40]!r}. Fix: open the file "
                         "first, Image.open(path), or pass a numpy array of shape [height, width, 3].")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8 bits instead of clipping at 255
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return image


def pixel_values(images: list[Image.Image]) -> torch.Tensor:
    """Images as a float tensor [batch, 3, height, width], scaled to [-1, 1] as SigLIP expects."""
    if isinstance(images, (Image.Image, np.ndarray)) or isinstance(images, str) or not len(images):
        raise ValueError(f"Expected a non-empty list of images, got {type(images).__name__}. Fix: pass [image] for one "
                         "image, or a list of them.")
    array = np.stack([np.asarray(as_rgb_image(image), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


# --- the splice ---------------------------------------------------------------------------------

def merge_image_features(
    input_ids: torch.Tensor,
    embed_tokens: nn.Module,
    image_features: torch.Tensor | list[torch.Tensor],
    image_token_id: int,
    *,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace each image placeholder by that image's feature vectors; return embeds, mask, positions, labels.

    The images are taken in reading order, row by row. The result is padded (zeros, mask 0, label -100)
    on padding_side; position ids count 0, 1, 2, ... over each row's real positions.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}. Fix: 'left' to generate, "
                         "'right' to train.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    n_placeholders = int(((input_ids == image_token_id) & real).sum())
    n_images = len(image_features)
    if n_placeholders != n_images:
        raise ValueError(
            f"The prompts hold {n_placeholders} image placeholder(s) (id {image_token_id}) but {n_images} "
            f"image(s) were given. Fix: put exactly one {IMAGE_TOKEN} in the prompt for each image, or pass "
            "one image per placeholder."
        )
    width = embed_tokens.weight.shape[1]
    if n_images and image_features[0].shape[-1] != width:
        raise ValueError(
            f"Image features have width {image_features[0].shape[-1]} but the language model embeds tokens "
            f"in {width}. Fix: pass the vision features through the connector first (model.encode_images)."
        )

    rows_embeds, rows_labels = [], []
    next_image = 0
    for row in range(input_ids.shape[0]):
        ids = input_ids[row][real[row]]
        row_labels = labels[row][real[row]] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
        cuts = (ids == image_token_id).nonzero().flatten().tolist()
        pieces_embeds, pieces_labels, start = [], [], 0
        for cut in cuts + [len(ids)]:
            pieces_embeds.append(embed_tokens(ids[start:cut]))
            pieces_labels.append(row_labels[start:cut])
            if cut < len(ids):  # a placeholder: splice in that image's features
                features = image_features[next_image]
                next_image += 1
                pieces_embeds.append(features.to(pieces_embeds[-1].dtype))
                pieces_labels.append(row_labels.new_full((len(features),), IGNORE_INDEX))
            start = cut + 1
        rows_embeds.append(torch.cat(pieces_embeds))
        rows_labels.append(torch.cat(pieces_labels))

    longest = max(len(e) for e in rows_embeds)
    batch = len(rows_embeds)
    inputs_embeds = rows_embeds[0].new_zeros(batch, longest, width)
    new_mask = attention_mask.new_zeros(batch, longest)
    position_ids = torch.zeros(batch, longest, dtype=torch.long, device=input_ids.device)
    new_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=input_ids.device)
    for row, (embeds, row_labels) in enumerate(zip(rows_embeds, rows_labels)):
        n = len(embeds)
        span = slice(0, n) if padding_side == "right" else slice(longest - n, longest)
        inputs_embeds[row, span] = embeds
        new_mask[row, span] = 1
        position_ids[row, span] = torch.arange(n, device=input_ids.device)
        new_labels[row, span] = row_labels
    return inputs_embeds, new_mask, position_ids, new_labels if labels is not None else None


# --- the model ----------------------------------------------------------------------------------

class ShapeEncoder(nn.Module):
    """A small convolutional vision encoder: a 64x64 image becomes a 4x4 grid of 16 patch features.

    It stands in for CLIP or SigLIP and answers the way LLaVA expects a vision tower to:
    an output whose hidden_states[-1] holds [images, patches, width].
    """

    def __init__(self, width: int = VISION_HIDDEN):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
        self.mix = nn.Linear(width, width)  # tells every patch about the whole image
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        grid = self.convs(pixel_values)  # [images, width, 4, 4]
        patches = grid.flatten(2).transpose(1, 2)  # [images, 16, width], row by row
        patches = self.norm(patches + self.mix(patches.mean(1, keepdim=True)))
        return BaseModelOutput(last_hidden_state=patches, hidden_states=(patches,))


def make_connector(vision_hidden: int, text_hidden: int) -> nn.Sequential:
    """TinyLLaVA's mlp2x_gelu connector: Linear, GELU, Linear, applied to each patch feature."""
    return nn.Sequential(nn.Linear(vision_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden))


def add_image_token(language_model, tokenizer) -> int:
    """Add <image> to the tokenizer as a special token and give it an embedding row; return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]},
                                     replace_extra_special_tokens=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    embeddings = language_model.get_input_embeddings()
    if embeddings.num_embeddings <= image_token_id:
        old = embeddings.weight.data
        language_model.resize_token_embeddings(image_token_id + 1, mean_resizing=False)
        # Our splice never looks this row up; LLaVA's does (then overwrites it). The mean keeps its logit ordinary.
        language_model.get_input_embeddings().weight.data[image_token_id] = old.mean(0)
    return image_token_id


class TinyLlava(nn.Module):
    """Vision encoder, connector and language model, joined by merge_image_features."""

    def __init__(self, language_model, tokenizer, vision_tower=None, connector=None):
        super().__init__()
        self.image_token_id = add_image_token(language_model, tokenizer)
        self.tokenizer = tokenizer
        self.vision_tower = vision_tower if vision_tower is not None else ShapeEncoder()
        self.connector = (connector if connector is not None
                          else make_connector(VISION_HIDDEN, language_model.config.hidden_size))
        self.language_model = language_model

    def freeze_for_stage1(self) -> None:
        """Only the connector learns (stage 1, feature alignment; our stage 2 keeps this too)."""
        for part in (self.vision_tower, self.language_model):
            part.requires_grad_(False)
            part.eval()
        self.connector.requires_grad_(True)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision encoder's patch features, [images, patches, vision width] (last layer, no pooling)."""
        return self.vision_tower(pixels).hidden_states[-1]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch features mapped by the connector into the LM's embedding space, [images, patches, hidden]."""
        return self.connector(self.image_features(pixels))

    def merge(self, input_ids, pixels, attention_mask=None, labels=None, padding_side="right"):
        """Encode the images and splice them into the embedded prompts (see merge_image_features)."""
        features = self.encode_images(pixels) if pixels is not None and len(pixels) else []
        return merge_image_features(input_ids, self.language_model.get_input_embeddings(), features,
                                    self.image_token_id, attention_mask=attention_mask, labels=labels,
                                    padding_side=padding_side)

    def forward(self, input_ids, pixels, attention_mask=None, labels=None):
        """Logits (and the mean loss over labelled positions when labels are given)."""
        inputs_embeds, mask, positions, labels = self.merge(input_ids, pixels, attention_mask, labels)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                                   labels=labels)

    def parameter_log(self) -> str:
        """Total and trainable parameter counts, per part, in the style of TinyLLaVA's training log."""
        lines = []
        for name, part in (("vision_tower", self.vision_tower), ("connector", self.connector),
                           ("language_model", self.language_model)):
            total = sum(p.numel() for p in part.parameters())
            trainable = sum(p.numel() for p in part.parameters() if p.requires_grad)
            lines.append(f"{name:<15} {total:>12,} parameters, {trainable:>10,} trainable")
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines.insert(0, f"Total Parameters: {total:,}, Total Trainable Parameters: {trainable:,}")
        return "\n".join(lines)

    @torch.no_grad()
    def answer(self, images: list[Image.Image], question: str, max_new_tokens: int = 6) -> list[str]:
        """Greedy replies to one question about each image (a batch, left-padded)."""
        pixels = pixel_values(images)  # checked before the model runs
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r}. Fix: for example "
                             "'What color is the shape?'.")
        check_max_new_tokens(max_new_tokens)
        prompts = [PROMPT.format(question=question)] * len(images)
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        embeds, mask, positions, _ = self.merge(batch.input_ids, pixels, batch.attention_mask,
                                                padding_side="left")
        new_ids = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id)
        return [reply.strip() for reply in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]


# --- the same parts inside transformers' LLaVA ---------------------------------------------------

def expand_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                        n_patches: int, pad_token_id: int, padding_side: str = "right"):
    """Repeat each image placeholder n_patches times, as LLaVA's processor does; re-pad the rows."""
    rows = []
    for ids, mask in zip(input_ids, attention_mask.bool()):
        row = []
        for token in ids[mask].tolist():
            row += [token] * (n_patches if token == image_token_id else 1)
        rows.append(row)
    longest = max(len(row) for row in rows)
    new_ids = torch.full((len(rows), longest), pad_token_id, dtype=input_ids.dtype)
    new_mask = torch.zeros((len(rows), longest), dtype=attention_mask.dtype)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(longest - len(row), longest)
        new_ids[i, span] = torch.tensor(row, dtype=input_ids.dtype)
        new_mask[i, span] = 1
    return new_ids, new_mask


def build_llava(model: TinyLlava, n_patches: int = 16):
    """A transformers LlavaForConditionalGeneration holding this model's own parts (shared, not copied)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    width = model.connector[0].in_features
    config = LlavaConfig(
        # LLaVA reads only the vision width from this config (to size its projector); the tower is ours.
        vision_config=SiglipVisionConfig(hidden_size=width, num_hidden_layers=1, num_attention_heads=1),
        text_config=model.language_model.config,
        image_token_id=model.image_token_id,
        image_seq_length=n_patches,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,  # the last hidden state of the vision tower ...
        vision_feature_select_strategy="full",  # ... every patch (no CLS token to drop)
        multimodal_projector_bias=True,
        tie_word_embeddings=model.language_model.config.tie_word_embeddings,
    )
    with torch.device("meta"):  # empty shells: every part is replaced by ours below
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = model.vision_tower
    llava.model.multi_modal_projector.linear_1 = model.connector[0]
    llava.model.multi_modal_projector.linear_2 = model.connector[2]
    llava.model.language_model = model.language_model.model
    llava.lm_head = model.language_model.lm_head
    return llava.eval()


# --- shipped weights ------------------------------------------------------------------------------

def save_weights(model: TinyLlava, path: Path = WEIGHTS_FILE, metadata: dict | None = None,
                 extra: dict[str, dict[str, torch.Tensor]] | None = None) -> str:
    """Write the vision tower and connector (and extra state dicts, by prefix) as safetensors, and the file's
    sha256 beside it; return the sha256."""
    from safetensors.torch import save_file

    from .models import sha256_of

    parts = {part: getattr(model, part).state_dict() for part in ("vision_tower", "connector")} | (extra or {})
    tensors = {f"{part}.{name}": value.detach().contiguous()
               for part, state in parts.items() for name, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".tmp")  # written in full, then renamed: never half a file
    save_file(tensors, staged, metadata={k: str(v) for k, v in (metadata or {}).items()})
    digest = sha256_of(staged)
    os.replace(staged, path)
    staged.write_text(f"{digest}  {path.name}\n")
    os.replace(staged, path.with_suffix(".sha256"))
    return digest


def load_weights(model: TinyLlava, path: Path = WEIGHTS_FILE, stage: int = 2) -> dict:
    """Check the file's sha256 against the one recorded beside it, then load; return its metadata.

    stage=2 loads the final connector, stage=1 the connector as it was after stage 1 (captions only).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}. Fix: pass stage=1 (after captions) or 2 (final).")
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .models import ChecksumError, ModelSetupError, sha256_of

    recorded = path.with_suffix(".sha256")
    if not path.is_file() or not recorded.is_file():
        missing = recorded if path.is_file() else path
        raise ModelSetupError(f"{missing} is missing. Fix: reinstall the package, or run `{TRAIN_COMMAND}` "
                              "to rebuild the weights and their sha256.")
    expected, actual = recorded.read_text().split()[0], sha256_of(path)
    if actual != expected:
        raise ChecksumError(f"Checksum mismatch for {path.name}: {recorded.name} records sha256 {expected}, the "
                            f"file has {actual}. Fix: reinstall the package, or run `{TRAIN_COMMAND}` to rebuild "
                            "both files.")
    tensors = load_file(path)
    stored = {"vision_tower": "vision_tower", "connector": "connector" if stage == 2 else "connector_stage1"}
    for part, name in stored.items():
        prefix = name + "."
        getattr(model, part).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def load_tinyllava(language_model=None, tokenizer=None, path: Path = WEIGHTS_FILE, stage: int = 2) -> TinyLlava:
    """The default LM (loaded if not given) with the shipped, trained vision tower and connector (of that stage)."""
    if language_model is None:
        from .models import load_model

        language_model, tokenizer = load_model(device="cpu")
    model = TinyLlava(language_model, tokenizer)
    load_weights(model, path, stage)
    model.freeze_for_stage1()
    return model


