"""Tokens made visible: chips, chat colouring, the token viewer, and the checks of notebook 01."""

import re

import pytest
import torch

from workshop_utils.checks import CheckFailed, check_reply_cut, check_stream_pieces, check_token_count
from workshop_utils.tokens import (DEFAULT_SYSTEM, GENERATION_PROMPT, as_token_ids, chat_segments, describe_tokens,
                                   render_chat, show_tokens, token_viewer, visible)


def _ids_in_text(text: str) -> list[int]:
    return [int(m) for m in re.findall(r" (\d+)\]", text)]


def test_visible_marks_whitespace_and_control_characters():
    assert visible(" a\tb\nc\r") == "·a⇥b↵c␍"
    assert visible("x\x04y") == "x\\x04y"
    assert visible("naïve 你好") == "naïve·你好"


def test_show_tokens_has_every_id_in_order_and_no_script(tokenizer):
    text = "Hello world! Tokens are not words."
    shown = show_tokens(tokenizer, text)
    assert _ids_in_text(shown.text) == tokenizer(text).input_ids
    assert shown.text.startswith(f"{len(tokenizer(text).input_ids)} tokens")
    assert "[·world 905]" in shown.text, "the space is shown as · at the start of the next token"
    lowered = shown.html.lower()
    assert "<script" not in lowered and "http" not in lowered and "onclick" not in lowered


def test_show_tokens_makes_newlines_and_spaces_visible(tokenizer):
    shown = show_tokens(tokenizer, "a  b\nc")
    assert "↵" in shown.text and "·" in shown.text
    assert "<br>" in shown.html, "a newline token ends its line of chips"
    assert len(shown.text.splitlines()) == 3, "summary line, then one line per text line"


def test_special_tokens_are_named_and_marked(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    tokens = describe_tokens(tokenizer, tokenizer(ids).input_ids)
    special = [t for t in tokens if t.kind == "special"]
    assert {t.label for t in special} == {"<|im_start|>", "<|im_end|>"}
    assert all(t.id in tokenizer.all_special_ids for t in special)
    html = show_tokens(tokenizer, [1, 2]).html
    assert "&lt;|im_start|&gt;" in html and "font-weight:bold" in html
    assert show_tokens(tokenizer, [1, 2]).text.endswith(", 2 special\n[<|im_start|> 1] [<|im_end|> 2]")


def test_pieces_of_a_character_show_their_bytes(tokenizer):
    tokens = describe_tokens(tokenizer, "你好")
    assert all(t.kind == "bytes" for t in tokens)
    raw = bytes(int(h, 16) for t in tokens for h in t.label.strip("«»").split())
    assert raw == "你好".encode("utf-8")


def test_accepts_lists_and_tensors_of_ids(tokenizer):
    ids = tokenizer("Hello world!").input_ids
    assert show_tokens(tokenizer, ids).text == show_tokens(tokenizer, torch.tensor([ids])).text
    assert as_token_ids(tokenizer, torch.tensor(ids)) == ids
    assert describe_tokens(tokenizer, ids[1:2])[0].label == "·world"


@pytest.mark.parametrize("bad, message", [
    ("", "text is empty"),
    ([], "ids is empty"),
    ([5, 49152], "Token id 49152 is outside this tokenizer's vocabulary"),
    ([-1], "Token id -1 is outside"),
    (torch.zeros(2, 3, dtype=torch.long), r"got shape \(2, 3\)"),
    (torch.tensor([0.5, 1.0]), "must be integers"),
])
def test_bad_input_is_refused_with_the_fix(tokenizer, bad, message):
    with pytest.raises(ValueError, match=message) as error:
        show_tokens(tokenizer, bad)
    assert "Fix:" in str(error.value)


def test_describe_tokens_works_for_a_tokenizer_that_is_not_byte_level():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokens = describe_tokens(word_level, "hello world")
    assert [(t.id, t.label) for t in tokens] == [(1, "hello"), (2, "world")]


CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                {"role": "user", "content": "And 3+3?"}]


def test_chat_segments_add_up_to_the_template_text(tokenizer):
    segments = chat_segments(tokenizer, CONVERSATION, add_generation_prompt=True)
    assert "".join(t for _, t in segments) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert [r for r, _ in segments] == [DEFAULT_SYSTEM, "user", "assistant", "user", GENERATION_PROMPT]
    assert "You are a helpful AI assistant" in segments[0][1]
    assert segments[1][1] == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert segments[-1][1] == "<|im_start|>assistant\n"


def test_an_explicit_system_message_is_not_called_added(tokenizer):
    roles = [r for r, _ in chat_segments(tokenizer, [{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]])]
    assert roles == ["system", "user"]


def test_render_chat_shows_the_ids_the_model_is_fed(tokenizer):
    shown = render_chat(tokenizer, CONVERSATION, add_generation_prompt=True)
    expected = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=True).input_ids
    assert _ids_in_text(shown.text) == list(expected)
    blocks = re.findall(r"^--- (.+) · (\d+) tokens$", shown.text, flags=re.M)
    assert [b[0] for b in blocks] == [DEFAULT_SYSTEM, "user", "assistant", "user", GENERATION_PROMPT]
    assert sum(int(n) for _, n in blocks) == len(expected)
    assert "#1d4ed8" in shown.html and "#15803d" in shown.html, "user and assistant have their own colours"


@pytest.mark.parametrize("messages, message", [
    ([], "The conversation is empty"),
    ([{"role": "user"}], "Message 0"),
    ([{"role": "user", "content": "Hi"}, "hello"], "Message 1"),
])
def test_render_chat_refuses_bad_messages(tokenizer, messages, message):
    with pytest.raises(ValueError, match=message):
        render_chat(tokenizer, messages)


def test_token_viewer_follows_its_text_box(tokenizer):
    viewer = token_viewer(tokenizer, "Hello")
    box, view = viewer.widget.children
    assert "wu-token-input" in box._dom_classes and "wu-token-view" in view._dom_classes
    box.value = "Hello world!"
    assert view.value == show_tokens(tokenizer, "Hello world!").html
    box.value = ""
    assert "type some text" in view.value
    bundle = viewer._repr_mimebundle_()
    assert "static picture" in bundle["text/plain"] and "[Hello 19556]" in bundle["text/plain"]


# --- the checks of notebook 01 ---

def test_check_token_count_names_characters_and_words(tokenizer, capsys):
    text = "Tokenizers split unfamiliar words."
    n = len(tokenizer(text).input_ids)
    check_token_count("count", n, text, tokenizer)
    assert capsys.readouterr().out == "✔ count\n"
    with pytest.raises(CheckFailed, match="number of characters"):
        check_token_count("count", len(text), text, tokenizer)
    with pytest.raises(CheckFailed, match="number of words"):
        check_token_count("count", 4, text, tokenizer)
    with pytest.raises(CheckFailed, match="whole number"):
        check_token_count("count", str(n), text, tokenizer)


def test_check_reply_cut_names_the_wrong_cut(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt).input_ids
    reply = "Hello there! I am a small model, and I can help you with many questions today."
    output_ids = prompt_ids + tokenizer(reply).input_ids + [tokenizer.eos_token_id]
    check_reply_cut("cut", reply, output_ids, len(prompt_ids), tokenizer)
    with pytest.raises(CheckFailed, match="your reply is empty.*token count"):
        check_reply_cut("cut", "", output_ids, len(prompt_ids), tokenizer)
    by_string = tokenizer.decode(output_ids, skip_special_tokens=True)[len(prompt):]
    with pytest.raises(CheckFailed, match=r"the first \d+ characters of the reply are missing"):
        check_reply_cut("cut", by_string, output_ids, len(prompt_ids), tokenizer)
    with pytest.raises(CheckFailed, match="skip_special_tokens=True"):
        check_reply_cut("cut", reply + "<|im_end|>", output_ids, len(prompt_ids), tokenizer)
    with pytest.raises(CheckFailed, match="extra characters of the prompt"):
        check_reply_cut("cut", "assistant\n" + reply, output_ids, len(prompt_ids), tokenizer)
    with pytest.raises(CheckFailed, match="expected a string"):
        check_reply_cut("cut", output_ids, output_ids, len(prompt_ids), tokenizer)


def test_check_stream_pieces(tokenizer):
    ids = tokenizer("say 你好").input_ids
    good, printed = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end])
        good.append("" if text.endswith("\ufffd") else text[len(printed):])
        printed = printed if text.endswith("\ufffd") else text
    check_stream_pieces("stream", good, ids, tokenizer)
    naive = [tokenizer.decode([i]) for i in ids]
    first_broken = next(i for i, piece in enumerate(naive) if "\ufffd" in piece)
    with pytest.raises(CheckFailed, match=f"piece {first_broken} is '.*\ufffd.*': it was printed before"):
        check_stream_pieces("stream", naive, ids, tokenizer)
    with pytest.raises(CheckFailed, match=f"1 pieces for {len(ids)} tokens"):
        check_stream_pieces("stream", [tokenizer.decode(ids)], ids, tokenizer)
    with pytest.raises(CheckFailed, match="joined differ"):
        check_stream_pieces("stream", good[:-1] + ["x"], ids, tokenizer)


def test_token_id_rows_is_the_one_normaliser():
    from workshop_utils.tokens import token_id_rows

    assert token_id_rows([3, 4]).tolist() == [[3, 4]]  # one sequence becomes one row
    assert token_id_rows(torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)).dtype == torch.long
    assert token_id_rows([], allow_empty=True).shape == (1, 0)
    for bad, kwargs, message in [
        ([[1, 2], [3, 4]], {"one_row": True}, r"got shape \(2, 2\)\. Fix: pass one row"),
        (torch.zeros(1, 2, 3, dtype=torch.long), {}, r"shape \[batch, positions\]"),
        ([], {"name": "input_ids"}, "input_ids is empty"),
        ([1, 7], {"vocab_size": 7, "name": "prompt"}, r"Token id 7 is outside.*ids 0 to 6\), in prompt"),
        (torch.tensor([True]), {}, "must be integers"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            token_id_rows(bad, **kwargs)
        assert "Fix:" in str(error.value)
