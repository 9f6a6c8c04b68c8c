"""workshop_utils.bpe: byte-level BPE by hand, equal to real tokenizers on 1,000 strings, and trained like BpeTrainer."""

import json

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workshop_utils.bpe import BYTE_TO_CHAR, ByteLevelBPE, train
from workshop_utils.bpe_lab import corpus, varied_strings

STRINGS = varied_strings(1000, seed=0)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im"]  # "<|im" overlaps: the longest match wins
# Llama 3's pre-tokenizer: at most three digits together, a letter run takes one leading symbol.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _mismatches(bpe, tokenizer, strings):
    """Strings where encode differs, and id lists where decode differs (whole, and cut mid-character)."""
    bad = []
    for text in strings:
        expected = tokenizer.encode(text, add_special_tokens=False)
        if bpe.encode(text) != expected:
            bad.append(("encode", text, bpe.encode(text)[:20], expected[:20]))
        for ids in (expected, expected[1:], expected[:-1]):
            if bpe.decode(ids) != tokenizer.decode(ids):
                bad.append(("decode", ids[:20], bpe.decode(ids), tokenizer.decode(ids)))
    return bad


def _library_tokenizer(kind: str, text: str, vocab_size: int = 1000):
    """A byte-level BPE of another family, trained here by the tokenizers library, as a transformers tokenizer."""
    tok = Tokenizer(models.BPE(ignore_merges=kind == "llama3-style"))
    if kind == "llama3-style":  # a Split regex, then bytes without GPT-2's regex; whole words kept when known
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # StarCoder-style: every digit alone, then GPT-2's regex with a space added in front
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=True)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _library_merges(text: str, vocab_size: int, special_tokens=()) -> list[tuple[str, str]]:
    """Merges learned by tokenizers' BpeTrainer with GPT-2's byte-level pre-tokenizer and all 256 bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]


@pytest.fixture(scope="module")
def reference(tokenizer):
    return ByteLevelBPE.from_tokenizer(tokenizer)


def test_the_string_set_is_varied_and_repeatable():
    assert len(STRINGS) == 1000 and len(set(STRINGS)) > 950 and STRINGS == varied_strings(1000, seed=0)
    joined = "".join(STRINGS)
    for sample in ["2024", "🙂", "你好", "   ", "\n\n", "<|im_start|>", "def ", "\x04"]:
        assert sample in joined, f"the 1,000 strings never contain {sample!r}"


def test_byte_table_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert BYTE_TO_CHAR == bytes_to_unicode()
    assert BYTE_TO_CHAR[32] == "Ġ" and BYTE_TO_CHAR[10] == "Ċ" and BYTE_TO_CHAR[ord("a")] == "a"


def test_encode_and_decode_equal_the_default_tokenizer(reference, tokenizer):
    bad = _mismatches(reference, tokenizer, STRINGS)
    assert not bad, f"{len(bad)} mismatches, the first: {bad[0]}"


def test_pre_tokenizer_pieces_equal_the_tokenizers(reference, tokenizer):
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    for text in STRINGS[:200]:
        for chunk in reference.added_pattern.split(text)[::2]:
            assert reference.pre_tokenize(chunk) == [p for p, _ in pre.pre_tokenize_str(chunk)], chunk


def test_special_tokens_pass_whole_and_the_chat_template_ids_are_equal(reference, tokenizer):
    assert reference.encode("<|im_start|>user") == [1, *tokenizer.encode("user", add_special_tokens=False)]
    messages = [{"role": "user", "content": "Split 2024 into tokens, please 🙂"},
                {"role": "assistant", "content": "2, 0, 2, 4."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert reference.encode(text) == list(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])


@pytest.mark.parametrize("kind", ["llama3-style", "starcoder-style"])
def test_encode_and_decode_equal_a_second_tokenizer_family(kind):
    library = _library_tokenizer(kind, corpus())
    bpe = ByteLevelBPE.from_tokenizer(library)
    assert len(bpe.merges) > 500
    bad = _mismatches(bpe, library, STRINGS)
    assert not bad, f"{len(bad)} mismatches, the first: {bad[0]}"


def test_training_reproduces_hand_computed_merges():
    # "aaabdaaabac" is one word. Counts: aa 4, ab 2, others 1 -> (a, a). Then "aa a b d aa a b a c":
    # (aa, a) and (a, b) both 2; a tie goes to the smaller ids, and "a" < "aa" (new, id 256) -> (a, b).
    # Then (aa, ab) 2 -> "aaab". Then all pairs count 1: (a, c) has the smallest first id ("a" < "d" < "aaab").
    assert train("aaabdaaabac", 260).merges == [("a", "a"), ("a", "b"), ("aa", "ab"), ("a", "c")]
    # " a za": words "Ġa" and "Ġza", every pair once. Ids follow the characters' code points, and "Ġ" is
    # U+0120, after "z": so (z, a) comes first, although the space is byte 32. Then (Ġ, a) before (Ġ, za).
    assert train(" a za", 259).merges == [("z", "a"), ("Ġ", "a"), ("Ġ", "za")]


def test_training_with_special_tokens_never_splits_them():
    bpe = train("<|endoftext|>ab<|endoftext|>ab", 258, ["<|endoftext|>"])
    assert bpe.merges == [("a", "b")]  # only "ab" was counted, twice; nothing of the special token
    assert bpe.added == {"<|endoftext|>": 0} and bpe.vocab["!"] == 1 and bpe.vocab["ab"] == 257
    assert bpe.encode("<|endoftext|>ab ab") == [0, 257, bpe.vocab["Ġ"], 257]


@pytest.mark.parametrize("text", ["aaabdaaabac", " a za", "the cat sat on the mat, the end"])
def test_tiny_corpora_train_like_the_library(text):
    assert train(text, 300).merges == _library_merges(text, 300)


def test_training_on_the_corpus_equals_the_library():
    text = corpus()
    assert len(text.encode("utf-8")) > 200_000
    ours, theirs = train(text, 1256).merges, _library_merges(text, 1256)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert ours == theirs, f"first different merge: {first}: {ours[first]} against {theirs[first]}"


def test_trained_tokenizer_round_trips():
    bpe = train(corpus(), 600, SPECIALS)
    for text in STRINGS[:300]:
        assert bpe.decode(bpe.encode(text)) == text, text  # all 256 bytes are in a trained vocabulary


def test_bad_input_names_the_fix(reference):
    with pytest.raises(ValueError, match="Fix: ask for at least 260"):
        train("some text", 258, SPECIALS)
    with pytest.raises(ValueError, match="empty.*Fix"):
        train("", 300)
    with pytest.raises(TypeError, match="str.*Fix"):
        train(b"bytes, not text", 300)
    with pytest.raises(TypeError, match="str.*Fix"):
        reference.encode(b"bytes")
    with pytest.raises(ValueError, match="not in this vocabulary.*Fix"):
        reference.decode([10**6])
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="not plain byte-level BPE.*Fix"):
        ByteLevelBPE.from_tokenizer(wordpiece)


def test_checks_name_the_first_difference(reference, tokenizer):
    from workshop_utils.checks import (CheckFailed, check_bpe_words, check_byte_table, check_decoder, check_encoder,
                                       check_predicted_tokens, check_trained)

    with pytest.raises(CheckFailed, match="byte 32 maps to ' ', expected 'Ġ'"):
        check_byte_table("table", {**BYTE_TO_CHAR, 32: " "})
    with pytest.raises(CheckFailed, match=r"text 0 .*position 7 differs: you have 2067 'Ġ<', expected 216 'Ġ'"):
        check_encoder("no added-token pass", reference.encode_ordinary, tokenizer, STRINGS)
    check_encoder("no added-token pass, specials as text", reference.encode_ordinary, tokenizer, STRINGS[:50],
                  split_special_tokens=True)

    def per_token(ids):  # decodes each token alone: a character split across tokens breaks
        return "".join(reference.decode([i]) for i in ids)

    with pytest.raises(CheckFailed, match="character .* differs.*Hint: join the bytes"):
        check_decoder("per token", per_token, tokenizer, [tokenizer.encode("🙂 ok", add_special_tokens=False)])

    def leftmost_first(word):  # merges the first pair that has a merge, whatever its rank
        parts = [c for c in word if c in reference.vocab]
        while (i := next((i for i, p in enumerate(zip(parts, parts[1:])) if p in reference.ranks), None)) is not None:
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    with pytest.raises(CheckFailed, match="'Ġthe' becomes \\['Ġth', 'e'\\], expected \\['Ġthe'\\]"):
        check_bpe_words("leftmost", leftmost_first, reference, ["Ġa", "Ġthe", "Ġtokenization"])
    documents = "<|endoftext|>".join(p for p in corpus()[:60_000].split("\n\n") if p.strip())
    counted = train(documents, 256 + 1 + 40)  # the special token's text counted, then given id 0 by hand
    vocab = {"<|endoftext|>": 0, **{t: i + 1 for t, i in counted.vocab.items()}}
    with pytest.raises(CheckFailed, match="merge \\d+ is .*special token's text counted"):
        check_trained("counted", vocab, counted.merges, train(documents, 256 + 1 + 40, ["<|endoftext|>"]))
    with pytest.raises(CheckFailed, match="you predicted 4, the tokenizer makes 13.*joins two digits"):
        check_predicted_tokens("digits", 4, "x = 1234567890", tokenizer)
