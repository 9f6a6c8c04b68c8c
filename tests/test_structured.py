"""Notebook 13's package modules: stopping (StopOnText against stop_strings), streaming (the incremental decoder),
structured (the JSON processor), and their errors."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.stopping_criteria import StopStringCriteria

from workshop_utils.stopping import StopOnText
from workshop_utils.streaming import IncrementalDecoder
from workshop_utils.structured import (PEOPLE, PERSON_SCHEMA, JsonGrammar, JsonSchemaLogitsProcessor,
                                       LLGuidanceLogitsProcessor, generate_replies, is_valid, llguidance_available,
                                       person_prompts)

TEXTS = {
    "emoji": "Party time 🎉🎉! Wave 👋🏽, thumbs 👍 and a family 👨‍👩‍👧 at the end 🚀",
    "cjk": "你好，世界！東京は今日晴れです。한국어도 있어요。",
    "mixed spaces": "  two  spaces,\ttabs\t\tand\n\nnewlines   then  é, ñ and ß  ",
}

# A schema with every kind of field the grammar knows; strings are bounded so that any model can finish.
EVERY_KIND = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "dark red"]},
        "born": {"type": "string", "format": "date"},
    },
    "required": ["name", "age", "member", "colour", "born"],
}


# --- the incremental decoder ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TEXTS))
def test_incremental_decoder_equals_decode_and_never_shows_half_a_character(tokenizer, name):
    ids = tokenizer(TEXTS[name]).input_ids
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in ids]
    assert not any("\ufffd" in piece for piece in pieces), [p for p in pieces if "\ufffd" in p]
    assert "".join(pieces) + decoder.finish() == tokenizer.decode(ids) == TEXTS[name]


def test_incremental_decoder_holds_back_the_bytes_of_an_emoji(tokenizer):
    ids = tokenizer("🎉").input_ids
    assert len(ids) > 1, "the emoji is one token here: pick one split into bytes"
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]
    assert decoder.finish() == ""


def test_incremental_decoder_finish_shows_an_unfinished_character_as_decode_does(tokenizer):
    ids = tokenizer("ok 🎉").input_ids[:-1]  # the emoji's last byte is missing
    decoder = IncrementalDecoder(tokenizer)
    shown = "".join(decoder.push(i) for i in ids)
    assert "\ufffd" not in shown
    assert shown + decoder.finish() == tokenizer.decode(ids)


def test_incremental_decoder_follows_generated_tokens(model, tokenizer):
    ids = tokenizer("Say hello in Japanese and Chinese:", return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in new]
    assert "".join(pieces) + decoder.finish() == tokenizer.decode(new)


# --- StopOnText against transformers' StopStringCriteria -------------------------------------------

STOP_CASES = [
    ("The capital of France is Paris. It is known for the Eiffel Tower.", ["Paris."]),
    ("Hello world! Tokens are not words, they are pieces.", ["are not", "xyz"]),
    ("one, two, three\n\nfour", ["\n\n"]),
    ("The weather today is sunny; tomorrow it rains.", ["ay is", "rains"]),
    ("你好，世界！東京は晴れ", ["世界"]),
]


@pytest.mark.parametrize("text,stops", STOP_CASES, ids=[c[1][0].strip() or "blank" for c in STOP_CASES])
def test_stop_on_text_equals_stop_string_criteria_at_every_length(tokenizer, text, stops):
    ids = tokenizer(text, return_tensors="pt").input_ids
    ours, theirs = StopOnText(tokenizer, stops), StopStringCriteria(tokenizer, stops)
    decisions = []
    for end in range(1, ids.shape[1] + 1):
        mine, reference = ours(ids[:, :end], None), theirs(ids[:, :end], None)
        assert mine.tolist() == reference.tolist(), f"after {end} tokens {tokenizer.decode(ids[0, :end])!r}"
        decisions.append(bool(mine[0]))
    assert any(decisions), "no stop string was reached: the case tests nothing"


def test_a_stop_string_can_straddle_two_tokens(tokenizer):
    ids = tokenizer("The weather today is sunny", return_tensors="pt").input_ids
    pieces = [tokenizer.decode([i]) for i in ids[0]]
    assert "ay is" not in pieces and not any("ay is" in p for p in pieces)
    stops = StopOnText(tokenizer, ["ay is"])
    ends = [end for end in range(1, ids.shape[1] + 1) if stops(ids[:, :end])[0]]
    assert ends and tokenizer.decode(ids[0, :ends[0]]).endswith(" is")


@pytest.mark.parametrize("prompt,stops", [
    ("The capital of France is", ["."]),
    ("List three fruits:\n1.", ["3."]),
    ("Once upon a time", [" was", " were"]),
])
def test_stop_on_text_stops_generate_where_stop_strings_does(model, tokenizer, prompt, stops):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    reference = model.generate(ids, stop_strings=stops, tokenizer=tokenizer, **kwargs)
    ours = model.generate(ids, stopping_criteria=[StopOnText(tokenizer, stops)], **kwargs)
    assert ours.tolist() == reference.tolist()
    assert reference.shape[1] < ids.shape[1] + 16, "the stop string never came: the case tests nothing"


# --- the grammar and the JSON processor -------------------------------------------------------------

def test_grammar_walks_valid_text_and_refuses_wrong_text():
    grammar = JsonGrammar(EVERY_KIND)
    good = '{"name": "A\\"b\\u00e9", "age": -12, "member": true, "colour": "dark red", "born": "2024-02-29"}'
    assert grammar.walk(grammar.start, good) == "done"
    for bad in ['{"name": "A", "age": 012', '{"name": "A", "age": 1, "member": yes',
                '{"name": "A", "age": 1, "member": true, "colour": "blue"',
                '{"name": "A", "age": 1, "member": true, "colour": "red", "born": "24-',
                '{"name": "abcdefghi"', '{"name": "A", "age": 1}', '{"name":"A"', '{"name": "a\nb"']:
        assert grammar.walk(grammar.start, bad) is None, bad


def test_a_token_may_close_a_string_and_open_the_next_key(tokenizer):
    processor = JsonSchemaLogitsProcessor(tokenizer, PERSON_SCHEMA)
    state = processor.grammar.walk(processor.grammar.start, '{"name": "Ada')
    allowed = processor.allowed(state)
    straddling = [i for i, s in enumerate(processor.strings) if s in ('",', '"}')]
    assert straddling
    for token_id in straddling:  # '",' closes the name and starts the next key; '"}' would skip age and mood
        assert bool(allowed[token_id]) == (processor.strings[token_id] == '",')


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """A tiny random Llama over the default tokenizer: unconstrained, it writes garbage."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.mark.slow
def test_tiny_random_model_writes_valid_json_only_when_constrained(tiny_llama, tokenizer):
    batch = person_prompts(tokenizer, PEOPLE[:6])
    processor = JsonSchemaLogitsProcessor(tokenizer, EVERY_KIND)
    torch.manual_seed(0)
    free, _, _ = generate_replies(tiny_llama, tokenizer, batch, 60)
    assert not any(is_valid(reply, EVERY_KIND) for reply in free)
    for seed in range(3):  # sampling walks many different paths through the grammar
        torch.manual_seed(seed)
        with torch.no_grad():
            out = tiny_llama.generate(**batch, max_new_tokens=80, do_sample=True, top_k=0, logits_processor=[processor])
        replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for reply in replies:
            assert is_valid(reply, EVERY_KIND), reply
            assert list(json.loads(reply)) == list(EVERY_KIND["properties"])  # every key, in the schema's order
        assert (out == tokenizer.eos_token_id).any(dim=1).all(), "a row did not end with end-of-sequence"


@pytest.mark.slow
def test_default_model_writes_valid_json_for_every_prompt(model, tokenizer):
    processor = JsonSchemaLogitsProcessor(tokenizer, PERSON_SCHEMA)
    replies, _, _ = generate_replies(model, tokenizer, person_prompts(tokenizer, PEOPLE[:6]), 32, processor)
    assert all(is_valid(reply, PERSON_SCHEMA) for reply in replies), replies
    names = [json.loads(reply)["name"] for reply in replies]
    assert names == [person.split(",")[0] for person in PEOPLE[:6]]  # the constraint keeps the model's answer


@pytest.mark.slow
@pytest.mark.skipif(not llguidance_available(), reason="llguidance is not installed (pip install -e .[structured])")
def test_llguidance_writes_the_same_json(model, tokenizer):
    batch = person_prompts(tokenizer, PEOPLE[:4])
    ours, _, _ = generate_replies(model, tokenizer, batch, 32, JsonSchemaLogitsProcessor(tokenizer, PERSON_SCHEMA))
    theirs, _, _ = generate_replies(model, tokenizer, batch, 32, LLGuidanceLogitsProcessor(tokenizer, PERSON_SCHEMA))
    assert ours == theirs


def test_processor_starts_again_for_a_new_prompt(tokenizer):
    processor = JsonSchemaLogitsProcessor(tokenizer, PERSON_SCHEMA)
    scores = torch.zeros(1, len(tokenizer))
    prefix = torch.tensor([[5] + tokenizer('{"name": "Al').input_ids])  # a one-token prompt, then JSON
    first = processor(prefix[:, :1], scores)
    for end in range(2, prefix.shape[1] + 1):
        processor(prefix[:, :end], scores)
    again = processor(prefix[:, :1], scores)  # a new generate call with a one-token prompt
    assert torch.equal(first, again)


# --- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("schema,words", [
    ({"type": "array"}, "object"),
    ({"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}, '"number"'),
    ({"type": "object", "properties": {"x": {"type": "string"}}}, "required"),
    ({"type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"]}, "enum"),
    ({"type": "object", "properties": {"x": {"type": "string", "maxLength": 0}}, "required": ["x"]}, "maxLength"),
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}, "required": ["x"]}, "pattern"),
    ({"type": "object", "properties": {}, "required": []}, "no properties"),
])
def test_schemas_outside_the_subset_are_refused(tokenizer, schema, words):
    with pytest.raises(ValueError, match="Supported:") as error:
        JsonSchemaLogitsProcessor(tokenizer, schema)
    assert words in str(error.value) and "Fix:" in str(error.value)


def test_stop_on_text_refuses_empty_stop_strings(tokenizer):
    for bad in ([], "", [""], [3]):
        with pytest.raises(ValueError, match="Fix"):
            StopOnText(tokenizer, bad)


def test_stop_on_text_refuses_a_stop_string_that_is_no_text(tokenizer):
    with pytest.raises(ValueError, match="got 5.*Fix"):
        StopOnText(tokenizer, 5)


@pytest.mark.parametrize("token_id, fix", [
    ("a", "must be token ids.*Fix"),
    (-1, "outside this tokenizer's vocabulary.*Fix"),
    (10 ** 6, "outside this tokenizer's vocabulary.*Fix"),
    (3.0, "must be integers.*Fix"),
    ([1, 2], "push takes one token id, got 2.*Fix"),
])
def test_incremental_decoder_refuses_what_is_not_one_token_id(tokenizer, token_id, fix):
    decoder = IncrementalDecoder(tokenizer)
    with pytest.raises(ValueError, match=fix):
        decoder.push(token_id)
    assert decoder.ids == []  # nothing half-added
    assert decoder.push(torch.tensor(42)) == tokenizer.decode([42])  # a 0-d tensor is one id


@pytest.mark.parametrize("make", [
    lambda bad: StopOnText(bad, ["."]),
    lambda bad: IncrementalDecoder(bad),
    lambda bad: JsonSchemaLogitsProcessor(bad, PERSON_SCHEMA),
])
def test_what_is_no_tokenizer_is_refused(make, tokenizer):
    for bad in (None, (None, tokenizer), "HuggingFaceTB/SmolLM2-135M-Instruct"):
        with pytest.raises(TypeError, match="Expected a tokenizer.*Fix: pass the tokenizer"):
            make(bad)


def test_a_token_outside_the_grammar_is_reported(tokenizer):
    processor = JsonSchemaLogitsProcessor(tokenizer, PERSON_SCHEMA)
    scores = torch.zeros(1, len(tokenizer))
    processor(torch.tensor([[5]]), scores)
    with pytest.raises(RuntimeError, match="does not fit the grammar"):
        processor(torch.tensor([[5, tokenizer("hello").input_ids[0]]]), scores)


def test_command_refuses_a_bad_prompt_count_before_loading_anything(capsys):
    from workshop_utils.structured import main

    with pytest.raises(SystemExit):
        main(["--prompts", "0"])
    assert "--prompts must be from 1 to 20" in capsys.readouterr().err
