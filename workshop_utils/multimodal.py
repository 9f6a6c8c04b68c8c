"""A TinyLLaVA-style multimodal model from parts: vision encoder, connector, frozen language model.

python -m workshop_utils.multimodal train   pretrain the small vision encoder, then train the connector
python -m workshop_utils.multimodal eval    answer colour and shape questions about 200 new images
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .display import progress

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 25),
    "purple": (130, 45, 175),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is this?"}
CAPTION_QUESTION = "Describe the image."
IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100  # labels with this value add nothing to the loss
# One user turn in SmolLM2's chat format, without the default system prompt the template would add.
PROMPT = "<|im_start|>user\n" + IMAGE_TOKEN + "\n{question}<|im_end|>\n<|im_start|>assistant\n"

DATA_DIR = Path(__file__).parent / "data"
WEIGHTS_FILE = DATA_DIR / "tinyllava_shapes.safetensors"
SHA256_FILE = DATA_DIR / "tinyllava_shapes.sha256"
VISION_HIDDEN = 128


# --- images -------------------------------------------------------------------------------------

_UPRIGHT = {"circle": 0.0, "square": 45.0, "triangle": -90.0, "star": -90.0}  # degrees of the first corner


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "star": 10}[shape]
    points = []
    for k in range(corners):
        radius = r * (0.45 if shape == "star" and k % 2 else 1.0)
        theta = angle + 2 * math.pi * k / corners
        points.append((cx + radius * math.cos(theta), cy + radius * math.sin(theta)))
    return points


def make_shapes(n: int, *, seed: int, image_size: int = 64) -> list[tuple[Image.Image, dict]]:
    """n generated images, each one coloured shape on a light, lightly noisy background, with attributes."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        size = rng.uniform(0.18, 0.4) * image_size  # circumradius
        cx = rng.uniform(size, image_size - size)
        cy = rng.uniform(size, image_size - size)
        angle = math.radians(_UPRIGHT[shape] + rng.uniform(-15, 15))
        tone = rng.randint(215, 250)
        background = np.full((image_size, image_size, 3), tone, dtype=np.float32)
        background += noise.normal(0, rng.choice([0.0, 6.0]), background.shape)
        image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
        fill = tuple(int(np.clip(c + rng.randint(-20, 20), 0, 255)) for c in COLORS[color])
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=fill)
        else:
            draw.polygon(_polygon(shape, cx, cy, size, angle), fill=fill)
        attributes = {"color": color, "shape": shape, "center": (round(cx, 1), round(cy, 1)),
                      "size": round(size, 1), "angle": round(math.degrees(angle), 1)}
        samples.append((image, attributes))
    return samples


def pixel_values(images: list[Image.Image]) -> torch.Tensor:
    """Images as a float tensor [batch, 3, height, width], scaled to [-1, 1] as SigLIP expects."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
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
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
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
        hidden = language_model.config.hidden_size
        self.connector = connector if connector is not None else make_connector(VISION_HIDDEN, hidden)
        self.language_model = language_model

    def freeze_for_stage1(self) -> None:
        """Stage 1 (feature alignment): only the connector learns."""
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
        prompts = [PROMPT.format(question=question)] * len(images)
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        embeds, mask, positions, _ = self.merge(batch.input_ids, pixel_values(images), batch.attention_mask,
                                                padding_side="left")
        new_ids = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id)
        return [reply.strip() for reply in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]


def stage1_batch(tokenizer, samples: list[tuple[Image.Image, dict]], tasks: list[str]):
    """Prompts with one image each, right-padded; labels keep only the answer tokens and <|im_end|>."""
    input_ids, labels = [], []
    for (_, attributes), task in zip(samples, tasks, strict=True):
        question = CAPTION_QUESTION if task == "caption" else QUESTIONS[task]
        answer = f"a {attributes['color']} {attributes['shape']}" if task == "caption" else attributes[task]
        prompt_ids = tokenizer(PROMPT.format(question=question)).input_ids
        answer_ids = tokenizer(answer + "<|im_end|>").input_ids
        input_ids.append(prompt_ids + answer_ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
    longest = max(len(ids) for ids in input_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([row + [pad] * (longest - len(row)) for row in input_ids])
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in input_ids])
    lab = torch.tensor([row + [IGNORE_INDEX] * (longest - len(row)) for row in labels])
    return ids, mask, lab


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

def save_weights(model: TinyLlava, path: Path = WEIGHTS_FILE, metadata: dict | None = None) -> str:
    """Write the vision tower and connector as safetensors, and the file's sha256 beside it; return it."""
    from safetensors.torch import save_file

    from .models import sha256_of

    tensors = {f"{part}.{name}": value.detach().contiguous()
               for part in ("vision_tower", "connector")
               for name, value in getattr(model, part).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={k: str(v) for k, v in (metadata or {}).items()})
    digest = sha256_of(path)
    path.with_suffix(".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def load_weights(model: TinyLlava, path: Path = WEIGHTS_FILE) -> dict:
    """Check the file's sha256 against the one recorded beside it, then load; return its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .models import sha256_of

    recorded = path.with_suffix(".sha256")
    if not recorded.is_file():
        raise FileNotFoundError(f"{recorded} is missing. Fix: run `python -m workshop_utils.multimodal train`.")
    expected, actual = recorded.read_text().split()[0], sha256_of(path)
    if actual != expected:
        raise ValueError(f"{path.name} has sha256 {actual}, but {recorded.name} records {expected}. Fix: reinstall "
                         "the package, or run `python -m workshop_utils.multimodal train` to rebuild both files.")
    tensors = load_file(path)
    for part in ("vision_tower", "connector"):
        prefix = part + "."
        getattr(model, part).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def load_tinyllava(language_model=None, tokenizer=None, path: Path = WEIGHTS_FILE) -> TinyLlava:
    """The default LM (loaded if not given) with the shipped, trained vision tower and connector."""
    if language_model is None:
        from .models import load_model

        language_model, tokenizer = load_model(device="cpu")
    model = TinyLlava(language_model, tokenizer)
    load_weights(model, path)
    model.freeze_for_stage1()
    return model


# --- training -----------------------------------------------------------------------------------

def pretrain_vision_tower(steps: int = 800, batch_size: int = 64, seed: int = 0, lr: float = 1e-3):
    """Train the small vision encoder from scratch to name each image's colour and shape (a stand-in for CLIP)."""
    torch.manual_seed(seed)
    tower = ShapeEncoder()
    heads = nn.ModuleDict({"color": nn.Linear(VISION_HIDDEN, len(COLORS)), "shape": nn.Linear(VISION_HIDDEN, len(SHAPES))})
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=lr)
    classes = {"color": list(COLORS), "shape": list(SHAPES)}
    for step in progress(range(steps), desc="vision encoder"):
        samples = make_shapes(batch_size, seed=seed * 1_000_003 + 10_000 + step)
        pooled = tower(pixel_values([s[0] for s in samples])).last_hidden_state.mean(1)
        loss = sum(nn.functional.cross_entropy(heads[k](pooled), torch.tensor([classes[k].index(a[k]) for _, a in samples]))
                   for k in heads)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return tower.eval()


def train_connector(model: TinyLlava, steps: int, batch_size: int = 16, seed: int = 0, lr: float = 1e-3,
                    tasks=("color", "shape", "caption")) -> list[float]:
    """Stage 1: train the connector alone on generated images; return the loss of each step."""
    model.freeze_for_stage1()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.connector.parameters(), lr=lr)
    losses = []
    for step in progress(range(steps), desc="connector"):
        samples = make_shapes(batch_size, seed=seed * 1_000_003 + 500_000 + step)
        ids, mask, labels = stage1_batch(model.tokenizer, samples, [rng.choice(tasks) for _ in samples])
        loss = model(ids, pixel_values([s[0] for s in samples]), mask, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def accuracy(model: TinyLlava, n: int = 200, seed: int = 12345, batch_size: int = 50) -> dict[str, float]:
    """Percent of n new images whose colour and shape the model names (first word of a greedy reply)."""
    samples = make_shapes(n, seed=seed)
    right = {"color": 0, "shape": 0}
    for start in range(0, n, batch_size):
        chunk = samples[start:start + batch_size]
        for task, question in QUESTIONS.items():
            replies = model.answer([s[0] for s in chunk], question)
            right[task] += sum(first_word(r) == a[task] for r, (_, a) in zip(replies, chunk))
    return {task: 100.0 * count / n for task, count in right.items()}


def first_word(reply: str) -> str:
    """The first word of a reply, lower-cased, without punctuation: what the accuracy counts."""
    words = reply.lower().replace(".", " ").split()
    return words[0] if words else ""


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """python -m workshop_utils.multimodal {train,eval}."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.multimodal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the vision encoder, then the connector; write the weights")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vision-steps", type=int, default=1200)
    train.add_argument("--connector-steps", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=8, help="images per connector step")
    train.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    evaluate = commands.add_parser("eval", help="ask about 200 new images; print colour and shape accuracy")
    evaluate.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    evaluate.add_argument("-n", type=int, default=200, help="number of new images")
    for command in (train, evaluate):
        command.add_argument("--threads", type=int, default=torch.get_num_threads(),
                             help="CPU threads (results repeat exactly for the same thread count)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .models import load_model
    from .notebook import setup_notebook

    setup_notebook(seed=args.seed if args.command == "train" else 0)  # quiet libraries
    language_model, tokenizer = load_model(device="cpu")
    if args.command == "eval":
        model = load_tinyllava(language_model, tokenizer, args.weights)
        scores = accuracy(model, n=args.n)
        print(f"color accuracy: {scores['color']:.1f}%")
        print(f"shape accuracy: {scores['shape']:.1f}%")
        return 0
    start = time.perf_counter()
    tower = pretrain_vision_tower(args.vision_steps, seed=args.seed)
    vision_seconds = time.perf_counter() - start
    model = TinyLlava(language_model, tokenizer, vision_tower=tower)
    torch.manual_seed(args.seed)
    model.connector = make_connector(VISION_HIDDEN, language_model.config.hidden_size)
    model.freeze_for_stage1()
    print(model.parameter_log())
    losses = train_connector(model, args.connector_steps, batch_size=args.batch_size, seed=args.seed)
    seconds = time.perf_counter() - start
    metadata = {"seed": args.seed, "vision_steps": args.vision_steps, "connector_steps": args.connector_steps,
                "batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__,
                "final_loss": f"{sum(losses[-10:]) / len(losses[-10:]):.4f}"}
    digest = save_weights(model, args.out, metadata)
    print(json.dumps(metadata))
    print(f"vision encoder {vision_seconds:.0f} s, total {seconds:.0f} s; wrote {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
