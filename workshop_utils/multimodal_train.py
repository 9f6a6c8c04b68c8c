"""The synthetic world TinyLLaVA learns in, its two training stages and its causal evaluation (notebook 07).

python -m workshop_utils.multimodal_train train   vision encoder, stage 1 (captions), stage 2 (Q&A); write weights
python -m workshop_utils.multimodal_train eval    real image against blank, shuffled, text-only and chance

The world: one coloured shape (6 colours, 4 shapes) on a light background, 64 x 64 pixels, generated from a seed,
so every image comes with its true description. The vision encoder is trained by this module on the same world:
nothing here says anything about real photographs. The model itself is in multimodal.py.
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

from .chat import IGNORE_INDEX, assistant_labels
from .display import progress, table
from .models import sha256_of
from .multimodal import (
    CHAT_PROMPT,
    IMAGE_TOKEN,
    PROMPT,
    SYSTEM,
    VISION_HIDDEN,
    WEIGHTS_FILE,
    ShapeEncoder,
    TinyLlava,
    load_tinyllava,
    load_weights,
    make_connector,
    pixel_values,
    save_weights,
)

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 25),
    "purple": (130, 45, 175),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
ANSWERS = {"color": tuple(COLORS), "shape": SHAPES}
QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is this?"}
HELD_OUT_SEED = 12345  # the evaluation's images; training images come from other seeds (see recipe_batch)
BLANK_TONE = 232  # the blank image: the background's mean tone, no shape


# --- the world: generated images and their descriptions ---------------------------------------

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


def blank_image(image_size: int = 64) -> Image.Image:
    """An image of the world with nothing in it: the background's mean tone, no shape, no noise."""
    return Image.new("RGB", (image_size, image_size), (BLANK_TONE,) * 3)


def caption(attributes: dict, image_size: int = 64) -> str:
    """The generated caption: 'a small red circle on the left' (size and place read from the attributes)."""
    size = "small" if attributes["size"] < 0.29 * image_size else "large"
    x = attributes["center"][0] / image_size
    place = "on the left" if x < 0.4 else "on the right" if x > 0.6 else "in the middle"
    return f"a {size} {attributes['color']} {attributes['shape']} {place}"


# --- conversations and their labels -----------------------------------------------------------

def caption_batch(tokenizer, captions: list[str]):
    """Stage 1's examples in LLaVA's 'plain' pretraining format: <image>, a newline, the caption, <|im_end|>.

    Right-padded input ids, mask and labels; the labels keep the caption and <|im_end|>, -100 elsewhere.
    """
    prefix = tokenizer(f"{IMAGE_TOKEN}\n", add_special_tokens=False).input_ids
    rows = [tokenizer(text + "<|im_end|>", add_special_tokens=False).input_ids for text in captions]
    longest = len(prefix) + max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX)
    for i, row in enumerate(rows):
        n = len(prefix) + len(row)
        ids[i, :n], mask[i, :n] = torch.tensor(prefix + row), 1
        labels[i, len(prefix):n] = torch.tensor(row)
    return ids, mask, labels


CAPTION_QUESTION = "Describe the image."


def question_batch(tokenizer, samples: list[tuple[Image.Image, dict]], tasks: list[str]):
    """One-turn questions in PROMPT's format, right-padded; labels keep only the answer and <|im_end|>.

    The format the shipped connector was trained on: task 'color', 'shape' or 'caption' ("a green circle").
    """
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


def qa_conversation(attributes: dict, rng: random.Random) -> list[dict]:
    """Stage 2's example: two turns, colour and shape in a random order, the image in the first user turn only."""
    tasks = rng.sample(list(QUESTIONS), k=2)
    messages = [{"role": "system", "content": SYSTEM}]
    for turn, task in enumerate(tasks):
        question = (f"{IMAGE_TOKEN}\n" if turn == 0 else "") + QUESTIONS[task]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": attributes[task]}]
    return messages


def conversation_batch(tokenizer, conversations: list[list[dict]]):
    """Right-padded input ids, mask and labels; labels keep the assistant's tokens only (notebook 05's masks)."""
    rows = [assistant_labels(tokenizer, messages) for messages in conversations]
    longest = max(ids.shape[1] for ids, _ in rows)
    ids = torch.full((len(rows), longest), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX)
    for i, (row_ids, row_labels) in enumerate(rows):
        n = row_ids.shape[1]
        ids[i, :n], mask[i, :n], labels[i, :n] = row_ids[0], 1, row_labels[0]
    return ids, mask, labels


def recipe_batch(tokenizer, stage: int, step: int, *, seed: int = 0, batch_size: int = 8):
    """The images, input ids, mask and labels of one training step: the same for the command and the notebook.

    Stage 1: captions (caption_batch). Stage 2: two-turn questions and answers (conversation_batch).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (captions) or 2 (questions and answers), got {stage!r}. Fix: pass 1 or 2.")
    samples = make_shapes(batch_size, seed=seed * 1_000_003 + (500_000 if stage == 1 else 700_000) + step)
    if stage == 1:
        batch = caption_batch(tokenizer, [caption(a) for _, a in samples])
    else:
        rng = random.Random(seed * 1_000_003 + 900_000 + step)
        batch = conversation_batch(tokenizer, [qa_conversation(a, rng) for _, a in samples])
    return [image for image, _ in samples], *batch


# --- training -----------------------------------------------------------------------------------

def pretrain_vision_tower(steps: int = 1200, batch_size: int = 64, seed: int = 0, lr: float = 1e-3):
    """Train the small vision encoder from scratch to name each image's colour and shape (a stand-in for CLIP).

    Returns the frozen encoder and the loss of each step. The two classifier heads are thrown away.
    """
    torch.manual_seed(seed)
    tower = ShapeEncoder()
    heads = nn.ModuleDict({"color": nn.Linear(VISION_HIDDEN, len(COLORS)),
                           "shape": nn.Linear(VISION_HIDDEN, len(SHAPES))})
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=lr)
    losses = []
    for step in progress(range(steps), desc="vision encoder"):
        samples = make_shapes(batch_size, seed=seed * 1_000_003 + 10_000 + step)
        pooled = tower(pixel_values([s[0] for s in samples])).last_hidden_state.mean(1)
        loss = sum(nn.functional.cross_entropy(heads[k](pooled),
                                               torch.tensor([ANSWERS[k].index(a[k]) for _, a in samples]))
                   for k in heads)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tower.requires_grad_(False)
    return tower.eval(), losses


def train_connector(model: TinyLlava, stage: int, steps: int, *, batch_size: int = 8, seed: int = 0,
                    lr: float = 1e-3) -> list[float]:
    """Train the connector alone (both stages train only it) on recipe_batch; return the loss of each step."""
    model.freeze_for_stage1()
    optimizer = torch.optim.AdamW(model.connector.parameters(), lr=lr)
    losses = []
    for step in progress(range(steps), desc=f"stage {stage}"):
        images, ids, mask, labels = recipe_batch(model.tokenizer, stage, step, seed=seed, batch_size=batch_size)
        loss = model(ids, pixel_values(images), mask, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


# --- evaluation: does the answer depend on the image? -------------------------------------------

def derangement(n: int, seed: int = 0) -> list[int]:
    """A random permutation with no fixed point (Sattolo's algorithm: one cycle through all n)."""
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 items, got {n}. Fix: evaluate on 2 images or more.")
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i, never i itself: that is what makes it one cycle
        order[i], order[j] = order[j], order[i]
    return order


def answer_token_ids(tokenizer, task: str) -> list[int]:
    """The first token of each possible answer (as the assistant's reply starts it), all distinct."""
    ids = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in ANSWERS[task]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Two {task} answers start with the same token. Fix: choose answers whose first tokens "
                         "differ.")
    return ids


@torch.no_grad()
def answer_logits(model: TinyLlava, question: str, pixels: torch.Tensor | None, batch_size: int = 50,
                  prompt: str = PROMPT):
    """The next-token logits after the prompt: one row per image in pixels, or one row without any image (None)."""
    text = prompt.format(question=question)
    if pixels is None:
        text = text.replace(IMAGE_TOKEN + "\n", "")
    rows = []
    for start in range(0, 1 if pixels is None else len(pixels), batch_size):
        chunk = None if pixels is None else pixels[start:start + batch_size]
        ids = model.tokenizer([text] * (1 if chunk is None else len(chunk)), return_tensors="pt").input_ids
        embeds, mask, positions, _ = model.merge(ids, chunk, padding_side="left")
        rows.append(model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                         logits_to_keep=1).logits[:, -1])
    return torch.cat(rows)


def evaluate(model: TinyLlava, n: int = 200, *, seed: int = HELD_OUT_SEED, batch_size: int = 50,
             samples: list | None = None, prompt: str = PROMPT) -> dict:
    """Ask about n held-out images with the real image, a blank one, another image, and no image at all.

    Images alternate between the colour question (even indices) and the shape question (odd ones). The answer
    is the possible answer whose first token the model ranks highest after the prompt. Every question of a type
    is the same text, so the model's answer depends on the image alone: the shuffled condition (question i shown
    the image of question permutation[i], never its own) reuses the real answers, moved by the permutation.
    """
    for label, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{label} must be a whole number of at least 2, got {value!r}: an accuracy over fewer "
                             "images means nothing. Fix: for example n=200, batch_size=50.")
    samples = samples if samples is not None else make_shapes(n, seed=seed)
    n = len(samples)
    blank = pixel_values([blank_image()])
    result = {"n": n, "images": {}, "permutation": {}, "truth": {}, "predicted": {}, "in_form": {},
              "margin": math.inf}
    for k, (task, question) in enumerate(QUESTIONS.items()):
        indices = list(range(k, n, len(QUESTIONS)))
        words, candidates = ANSWERS[task], answer_token_ids(model.tokenizer, task)
        pixels = pixel_values([samples[i][0] for i in indices])
        logits = {"real image": answer_logits(model, question, pixels, batch_size, prompt),
                  "blank image": answer_logits(model, question, blank, prompt=prompt),
                  "text only": answer_logits(model, question, None, prompt=prompt)}
        chosen = {name: [words[j] for j in rows[:, candidates].argmax(-1).tolist()] for name, rows in logits.items()}
        permutation = derangement(len(indices), seed + k)
        real = chosen["real image"]
        predicted = {"real image": real, "blank image": chosen["blank image"] * len(indices),
                     "shuffled images": [real[j] for j in permutation],
                     "text only": chosen["text only"] * len(indices)}
        for name, answers in predicted.items():
            result["predicted"].setdefault(name, {})[task] = answers
        result["images"][task], result["permutation"][task] = indices, permutation
        result["truth"][task] = [samples[i][1][task] for i in indices]
        # in form: the model's favourite next token over the whole vocabulary starts one of the answers
        result["in_form"][task] = sum(t in candidates for t in logits["real image"].argmax(-1).tolist())
        top2 = logits["real image"][:, candidates].topk(2).values
        result["margin"] = min(result["margin"], float((top2[:, 0] - top2[:, 1]).min()))
    return result


def _right(predicted: list[str], truth: list[str]) -> np.ndarray:
    return np.array([p == t for p, t in zip(predicted, truth, strict=True)])


def accuracy_rows(result: dict, *, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Per condition and question type: right answers, n, accuracy and a 95% bootstrap interval over images.

    Chance is given twice: uniform guessing (1/k, exact) and always giving the held-out set's most frequent answer
    (what a model that never looks scores on this set).
    """
    rng = np.random.default_rng(seed)
    draws = {t: rng.integers(0, len(truth), size=(resamples, len(truth)))  # the same resamples for every row
             for t, truth in result["truth"].items()}

    def row(name, right_by_task):
        out = {"condition": name}
        for task, right in right_by_task.items():
            n = len(right)
            boot = right[draws[task]].mean(1) * 100
            out[task] = (int(right.sum()), n, 100 * right.mean(),
                         float(np.percentile(boot, 2.5, method="lower")),
                         float(np.percentile(boot, 97.5, method="higher")))
        return out

    rows = [row(name, {t: _right(p, result["truth"][t]) for t, p in by_task.items()})
            for name, by_task in result["predicted"].items()]
    frequent = {t: max(ANSWERS[t], key=truth.count) for t, truth in result["truth"].items()}
    rows.append(row("chance: most frequent answer", {t: _right([frequent[t]] * len(truth), truth)
                                                     for t, truth in result["truth"].items()}))
    rows.append({"condition": "chance: uniform guess",
                 **{t: (None, None, 100 / len(ANSWERS[t]), None, None) for t in result["truth"]}})
    return rows


def causal_table(result: dict, **kwargs):
    """accuracy_rows as a table: right/n, accuracy and its 95% interval, per question type."""
    cells = []
    for row in accuracy_rows(result, **kwargs):
        line = [row["condition"]]
        for task in QUESTIONS:
            right, n, acc, lo, hi = row[task]
            line += [f"{right}/{n}" if right is not None else f"1/{len(ANSWERS[task])}", f"{acc:.1f}%",
                     f"{lo:.1f}–{hi:.1f}" if lo is not None else "exact"]
        cells.append(line)
    header = ["condition"] + [f"{task} {what}" for task in QUESTIONS for what in ("right", "accuracy", "95% interval")]
    return table(header, cells)


def confusion(result: dict, task: str, condition: str = "real image"):
    """Counts of (true answer, given answer) for one question type, as a table: rows true, columns given."""
    words = ANSWERS[task]
    counts = {(t, p): 0 for t in words for p in words}
    for t, p in zip(result["truth"][task], result["predicted"][condition][task]):
        counts[t, p] += 1
    return table([f"true {task} \\ answer", *words],
                 [[t, *(counts[t, p] for p in words)] for t in words])


def wrong_answers(result: dict, condition: str = "real image") -> list[tuple[int, str, str, str]]:
    """(image index, question type, true answer, given answer) for every wrong answer, in image order."""
    return sorted((i, task, t, p) for task in QUESTIONS
                  for i, t, p in zip(result["images"][task], result["truth"][task],
                                     result["predicted"][condition][task]) if t != p)


def first_word(reply: str) -> str:
    """The first word of a reply, lower-cased, without punctuation."""
    words = reply.lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """python -m workshop_utils.multimodal_train {train,eval}."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils.multimodal_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="vision encoder, then stage 1 and stage 2 of the connector")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vision-steps", type=int, default=1200)
    train.add_argument("--vision-from", type=Path, default=None,
                       help="take the vision encoder from these weights (checksum verified) instead of training it")
    train.add_argument("--stage1-steps", type=int, default=60)
    train.add_argument("--stage2-steps", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=8, help="images per connector step")
    train.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the connector (as in notebook 07)")
    train.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    evaluate_parser = commands.add_parser("eval", help="the causal table on held-out images")
    evaluate_parser.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    evaluate_parser.add_argument("-n", type=int, default=200, help="number of held-out images")
    evaluate_parser.add_argument("--stage", type=int, choices=(1, 2), default=2, help="which connector to use")
    evaluate_parser.add_argument("--chat-prompt", action="store_true",
                                 help="ask with stage 2's system turn (for weights made by this train command)")
    for command in (train, evaluate_parser):
        command.add_argument("--threads", type=int, default=torch.get_num_threads(),
                             help="CPU threads (results repeat exactly for the same thread count)")
    args = parser.parse_args(argv)
    if args.command == "train" and min(args.vision_steps, args.stage1_steps, args.stage2_steps, args.batch_size) < 1:
        parser.error("steps and batch size must be at least 1. Fix: pass positive numbers.")
    torch.set_num_threads(args.threads)
    from .models import load_model
    from .notebook import setup_notebook

    setup_notebook(seed=args.seed if args.command == "train" else 0)  # quiet libraries
    language_model, tokenizer = load_model(device="cpu")
    if args.command == "eval":
        model = load_tinyllava(language_model, tokenizer, args.weights, stage=args.stage)
        result = evaluate(model, n=args.n, prompt=CHAT_PROMPT if args.chat_prompt else PROMPT)
        print(causal_table(result))
        return 0
    start = time.perf_counter()
    if args.vision_from is not None:  # the encoder of an earlier run of this command, verified by its sha256
        donor = TinyLlava(language_model, tokenizer)
        vision_metadata = load_weights(donor, args.vision_from)
        tower, vision_losses = donor.vision_tower.requires_grad_(False).eval(), []
        vision_note = (f"from {args.vision_from.name} (sha256 {sha256_of(args.vision_from)}), trained by "
                       f"seed {vision_metadata.get('seed')}, {vision_metadata.get('vision_steps')} steps")
    else:
        tower, vision_losses = pretrain_vision_tower(args.vision_steps, seed=args.seed)
        vision_note = f"trained here: seed {args.seed}, {args.vision_steps} steps"
    model = TinyLlava(language_model, tokenizer, vision_tower=tower)
    torch.manual_seed(args.seed)
    model.connector = make_connector(VISION_HIDDEN, language_model.config.hidden_size)
    model.freeze_for_stage1()
    print(model.parameter_log())
    stage1 = train_connector(model, 1, args.stage1_steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr)
    connector_stage1 = {k: v.clone() for k, v in model.connector.state_dict().items()}
    stage2 = train_connector(model, 2, args.stage2_steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr)
    seconds = time.perf_counter() - start
    command = ("python -m workshop_utils.multimodal_train train " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k).name if isinstance(getattr(args, k), Path) else getattr(args, k)}"
        for k in ("seed", "vision_steps", "vision_from", "stage1_steps", "stage2_steps", "batch_size", "lr")
        if getattr(args, k) is not None and not (k == "vision_steps" and args.vision_from)))
    metadata = {"command": command, "seed": args.seed, "vision_encoder": vision_note,
                "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
                "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "torch": torch.__version__,
                "seconds": round(seconds), "vision_losses": json.dumps([round(x, 4) for x in vision_losses]),
                "stage1_losses": json.dumps([round(x, 4) for x in stage1]),
                "stage2_losses": json.dumps([round(x, 4) for x in stage2])}
    digest = save_weights(model, args.out, metadata, extra={"connector_stage1": connector_stage1})
    print(command)
    print(f"stage 1 loss {stage1[0]:.2f} -> {stage1[-1]:.2f}, stage 2 loss {stage2[0]:.2f} -> {stage2[-1]:.2f}")
    print(f"{seconds:.0f} s; wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
