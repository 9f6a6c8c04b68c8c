"""The generated shapes TinyLLaVA learns on, its stage-1 training and its evaluation (notebook 07).

python -m workshop_utils.multimodal_train train   pretrain the small vision encoder, then train the connector
python -m workshop_utils.multimodal_train eval    answer colour and shape questions about 200 new images

The model itself (vision encoder, connector, splice, processor, shipped weights) is in multimodal.py.
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

from .chat import IGNORE_INDEX
from .display import progress
from .multimodal import (PROMPT, VISION_HIDDEN, WEIGHTS_FILE, ShapeEncoder, TinyLlava, load_tinyllava, make_connector,
                         pixel_values, save_weights)

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


# --- the data: generated images ---------------------------------------------------------------

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


# --- training and evaluation -------------------------------------------------------------------

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
    for label, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a whole number of at least 1, got {value!r}: a percentage of no "
                             "images means nothing. Fix: for example n=200, batch_size=50.")
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
    """python -m workshop_utils.multimodal_train {train,eval}."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.multimodal_train", description=__doc__,
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
