"""What notebook 14 needs around the BPE algorithm: its texts, bytes per token, and the compression plot.

The training corpus is shipped in data/ (a frozen snapshot of the kit's own lessons and notebooks, Apache-2.0;
see data/bpe_corpus.md). The notebook and tests/test_bpe.py share the 1,000 varied strings, so that "equal on
1,000 strings" means the same strings in both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from .paths import write_text_atomic

DATA = Path(__file__).resolve().parent / "data"
CORPUS_FILE = DATA / "bpe_corpus.txt"

# Pieces the generated strings are made of: the places where a hand-written tokenizer goes wrong.
FRAGMENTS = {
    "words": ["the", "The", " model", "tokens", "HELLO", "hello", "world", "don't", "I'll", "we're", "it's", "'s",
              "'ve", "'d", "'M", "café", "naïve", "Straße", "Ωmega", "über", "façade", "x", "a", "I"],
    "digits": ["0", "7", "42", "2024", "3.14159", "1,000,000", "-17", "1e-5", "0x1F", "99.9%", "٣٤", "²", "½",
               "123456789012345"],
    "code": ["def f(x):", "return x**2", "    ", "\t", "if (a != b) {", "};", "x += 1", "a[i][j]", "#include <stdio.h>",
             "print(f'{n:>8}')", "=>", "::", "->", "!==", "/* */", "// comment", "<div class=\"a\">", "$HOME", "@decorator",
             "lambda _: None", "\\n", "SELECT * FROM t;"],
    "emoji": ["🙂", "👍🏽", "🎉", "👨‍👩‍👧", "🇫🇷", "❤️", "🤗", "✔"],
    "other scripts": ["你好，世界", "日本語のテキスト", "한국어", "Привет, мир", "Γειά σου", "مرحبا بالعالم", "नमस्ते",
                      "שלום", "ไทย", "Tiếng Việt"],
    "whitespace": [" ", "  ", "   ", "\n", "\n\n", "\r\n", " \n ", "\t\t", "\u00a0", "\u3000", "\n    ", "        "],
    "punctuation": [".", ",", "!", "?", "...", "—", "–", "«", "»", "\"", "'", "(", ")", "’", "…", "¿", "§"],
    "special tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\n", "<|im_end|>\n", "<|im"],
    "control bytes": ["\x00", "\x04", "\x07", "\x1b[0m", "\x7f", "\ufeff", "\u200b"],
}


def corpus() -> str:
    """The training corpus: about 260 kB of the kit's own lessons and notebooks (Apache-2.0)."""
    return CORPUS_FILE.read_text(encoding="utf-8")


def build_corpus(root: str | Path, out: str | Path = CORPUS_FILE) -> int:
    """Write the corpus from a checkout of the kit: lessons/*.md, README.md, then every notebook cell's source."""
    import nbformat

    root = Path(root)
    if not any(root.glob("notebooks/*.ipynb")) or not any(root.glob("lessons/*.md")):
        raise ValueError(f"{root} has no lessons/*.md or no notebooks/*.ipynb, so the corpus would be nearly empty "
                         "(and would replace the shipped one). Fix: pass the root of a checkout of the kit.")
    parts = [p.read_text(encoding="utf-8") for p in [*sorted(root.glob("lessons/*.md")), root / "README.md"]]
    for path in sorted(root.glob("notebooks/*.ipynb")):
        parts += [cell.source for cell in nbformat.read(path, as_version=4).cells]
    text = "\n\n".join(parts) + "\n"
    write_text_atomic(Path(out), text)
    return len(text.encode("utf-8"))


def generated_string(rng: random.Random) -> str:
    """One string of 1 to 12 fragments of random kinds, sometimes glued without spaces."""
    pieces = [rng.choice(FRAGMENTS[rng.choice(list(FRAGMENTS))]) for _ in range(rng.randint(1, 12))]
    return "".join(p + rng.choice(["", "", " ", "\n"]) for p in pieces)


def corpus_string(rng: random.Random, text: str) -> str:
    """A slice of the corpus: 1 to 400 characters from a random place."""
    start = rng.randrange(len(text))
    return text[start:start + rng.randint(1, 400)]


def varied_strings(n: int = 1000, *, seed: int = 0) -> list[str]:
    """n strings, half generated from FRAGMENTS and half cut from the corpus, the same for the same seed."""
    rng, text = random.Random(seed), corpus()
    return [generated_string(rng) if i % 2 == 0 else corpus_string(rng, text) for i in range(n)]


# Held out from the corpus: the same kind of text as the corpus, and text it has never seen.
SAMPLES = {
    "English": (
        "A tokenizer cuts text into pieces that the model has seen many times. Frequent words become one "
        "piece each, rare words are spelled with several, and anything at all can still be written byte by "
        "byte. The price of a word is paid in tokens, and tokens are what a model reads, writes and is billed "
        "for, so the same sentence can cost more in one language than in another."),
    "Python code": (
        "def count_pairs(words):\n"
        "    \"\"\"Count adjacent pairs in every word, weighted by how often the word occurs.\"\"\"\n"
        "    counts = {}\n"
        "    for word, n in words.items():\n"
        "        for pair in zip(word, word[1:]):\n"
        "            counts[pair] = counts.get(pair, 0) + n\n"
        "    return counts\n"),
    "French": (
        "Un tokeniseur découpe le texte en morceaux que le modèle a vus très souvent. Les mots fréquents "
        "deviennent un seul morceau, les mots rares en demandent plusieurs, et tout le reste peut encore "
        "s'écrire octet par octet. Une même phrase peut donc coûter plus cher dans une langue que dans une autre."),
    "Chinese": (
        "分词器把文本切成模型见过很多次的片段。常见的词变成一个片段，少见的词要用好几个片段来写，"
        "其他任何内容仍然可以一个字节一个字节地写出来。所以同一句话在不同的语言里，花费的词元数量并不相同。"),
}


def bytes_per_token(encode, text: str) -> float:
    """UTF-8 bytes of text divided by the number of tokens encode(text) makes: higher is better compression."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"bytes_per_token needs a non-empty text, got {text!r}. Fix: pass a sample such as "
                         "SAMPLES['English'].")
    return len(text.encode("utf-8")) / len(encode(text))


def plot_bytes_per_token(sizes: Sequence[int], curves: dict[str, Sequence[float]],
                         reference: dict[str, float] | None = None) -> None:
    """Bytes per token against vocabulary size, one line per text; the reference tokenizer's values dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for (label, values), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.plot(sizes, values, marker=".", color=colour, label=label)
        if reference and label in reference:
            ax.axhline(reference[label], color=colour, linestyle="--", linewidth=0.8)
    ax.set(xscale="log", xlabel="vocabulary size (256 bytes + merges)", ylabel="bytes per token",
           title="compression of the trained tokenizer (dashed: the model's tokenizer)")
    ax.set_xticks(list(sizes), [str(s) for s in sizes])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
