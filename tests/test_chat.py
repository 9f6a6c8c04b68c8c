"""workshop_utils.chat: cutting out replies, running turns, assistant-only labels, and the errors."""

import copy

import pytest
import torch
from transformers import AutoTokenizer

from workshop_utils.chat import assistant_labels, chat_replies, chat_turn, extract_response
from workshop_utils.models import default_model_dir

# Replies that contain text resembling the template's markers, as a model or a user could write them.
TRICKY = [
    "Sure.\n<|im_start|>assistant\nThis line looks like a new turn.",
    "assistant\nassistant\n",
    "The header is `<|im_start|>assistant` and a turn ends with <|im_end|> in the template.",
]
CONVERSATIONS = [  # 1, 2 and 3 turns; the last assistant message is the reply to cut out
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": TRICKY[0]}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Say the header."},
     {"role": "assistant", "content": TRICKY[1]}],
    [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"},
     {"role": "user", "content": "assistant\nTwo?"}, {"role": "assistant", "content": TRICKY[0]},
     {"role": "user", "content": "Three?"}, {"role": "assistant", "content": TRICKY[2]}],
]
# SmolLM2's template with transformers' {% generation %} marks around each assistant reply and its end of turn.
GENERATION_MARKS = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
                    "{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}{% else %}"
                    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                    "{% endif %}")
# Two templates unlike SmolLM2's, in the style of Llama 2 and of Gemma.
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
          "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
          "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


@pytest.fixture()
def fresh_tokenizer():
    """A tokenizer of its own, free to get another template (the session one stays as it is)."""
    return AutoTokenizer.from_pretrained(default_model_dir())


def _runs(ids, labels):
    """The contiguous stretches of learned ids (labels != -100)."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token, "a learned label must be the token itself"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# --- extract_response -----------------------------------------------------------------------------

@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["1 turn", "2 turns", "3 turns"])
@pytest.mark.parametrize("plain_text", [False, True], ids=["markers as special ids", "markers as text"])
def test_extract_response_cuts_the_last_reply(tokenizer, conversation, plain_text):
    prompt_ids = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=False)
    reply = conversation[-1]["content"]
    reply_ids = tokenizer.encode(reply, add_special_tokens=False, split_special_tokens=plain_text)
    # What generate returns: prompt, reply, end of turn, then whatever follows (padding of a batch).
    after = [tokenizer.eos_token_id, tokenizer.eos_token_id] + tokenizer.encode("<|im_start|>user\nmore")
    output_ids = torch.tensor([prompt_ids + reply_ids + after])
    # Typed as text, a marker is ordinary text. As a special id, <|im_end|> is the end of the turn.
    expected = reply if plain_text else reply.split("<|im_end|>")[0]
    assert extract_response(tokenizer, torch.tensor([prompt_ids]), output_ids) == expected
    assert extract_response(tokenizer, prompt_ids, output_ids[0].tolist()) == expected


def test_extract_response_without_end_of_turn_keeps_everything(tokenizer):
    prompt_ids = tokenizer.apply_chat_template(CONVERSATIONS[0][:1], add_generation_prompt=True, return_dict=False)
    cut_short = tokenizer.encode("It is five, because", add_special_tokens=False)
    assert extract_response(tokenizer, prompt_ids, prompt_ids + cut_short) == "It is five, because"
    assert extract_response(tokenizer, prompt_ids, prompt_ids + cut_short, eos_token_id=[tokenizer.convert_tokens_to_ids(",")]) \
        == "It is five"


def test_extract_response_refuses_mismatched_rows(tokenizer):
    prompt_ids = tokenizer.apply_chat_template(CONVERSATIONS[0][:1], add_generation_prompt=True, return_dict=False)
    with pytest.raises(ValueError, match="do not start with prompt_ids"):
        extract_response(tokenizer, prompt_ids, prompt_ids[1:] + [2])
    with pytest.raises(ValueError, match="pass one row"):
        extract_response(tokenizer, torch.tensor([prompt_ids, prompt_ids]), torch.tensor([prompt_ids, prompt_ids]))


# --- chat_turn and chat_replies on the real model -------------------------------------------------

QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is 3 + 4?", "Say hello in Spanish."]


@pytest.mark.slow
def test_chat_turn_equals_generate_and_slicing_and_leaves_messages_alone(model, tokenizer):
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        before = copy.deepcopy(messages)
        reply = chat_turn(model, tokenizer, messages, max_new_tokens=12)
        assert messages == before
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        new_ids = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt.input_ids.shape[1]:]
        assert reply == tokenizer.decode(new_ids, skip_special_tokens=True)
        assert reply and "<|im_end|>" not in reply


@pytest.mark.slow
def test_a_templated_reply_gives_back_the_text_the_model_wrote(model, tokenizer):
    # The loop of the notebook: the reply goes back in as the assistant's message, and the next prompt
    # starts with the text of the prompt and of the ids generated, end of turn included. (Not always with
    # the same ids: the model may write one token where tokenizing the text gives two.)
    messages = [{"role": "user", "content": "What is 2 + 2? Think step by step."}]
    for follow_up in ["Now answer with a single number.", "Thanks!"]:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        output = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0].tolist()
        reply = extract_response(tokenizer, prompt, output)
        messages = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": follow_up}]
        again = tokenizer.apply_chat_template(messages, tokenize=False)
        written = tokenizer.decode(output)
        assert again.startswith(written if written.endswith("<|im_end|>") else written + "<|im_end|>")


@pytest.mark.slow
def test_chat_replies_batch_equals_one_at_a_time(model, tokenizer):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    batched = chat_replies(model, tokenizer, conversations, max_new_tokens=10)
    assert batched == [chat_turn(model, tokenizer, c, max_new_tokens=10) for c in conversations]


@pytest.mark.slow
def test_chat_turn_continues_a_conversation(model, tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."},
                {"role": "user", "content": "Repeat the result."}]
    reply = chat_turn(model, tokenizer, messages, max_new_tokens=8)
    # generate's reply to the whole conversation, templated; not the reply to the last message alone.
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    new_ids = model.generate(**prompt, max_new_tokens=8, do_sample=False)[0, prompt.input_ids.shape[1]:]
    assert reply == tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "5" in reply and reply != chat_turn(model, tokenizer, messages[-1:], max_new_tokens=8)


# --- errors, raised before any forward pass -------------------------------------------------------

@pytest.mark.parametrize("messages, match", [
    ([], "empty"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "append the next user message"),
    ([{"role": "bot", "content": "Hi"}], "role 'bot'"),
    ([{"role": "user"}], "string 'content'"),
    ("What is 2 + 3?", r"a string, not a list of messages: pass \[\{'role': 'user', 'content': 'What is 2 \+ 3\?'\}\]"),
    ({"role": "user", "content": "Hi"}, "wrap it in a list"),
])
def test_chat_turn_errors_name_the_fix(no_forward_model, tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        chat_turn(no_forward_model(), tokenizer, messages)


def test_a_role_the_template_rejects(no_forward_model, fresh_tokenizer):
    fresh_tokenizer.chat_template = GEMMA
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="rejects this conversation: System role not supported. Fix"):
        chat_turn(no_forward_model(), fresh_tokenizer, messages)
    with pytest.raises(ValueError, match="rejects this conversation"):
        assistant_labels(fresh_tokenizer, [*messages, {"role": "assistant", "content": "Hello"}])


def test_chat_replies_wants_a_list_of_conversations(no_forward_model, tokenizer):
    with pytest.raises(ValueError, match="chat_replies takes a list of conversations"):
        chat_replies(no_forward_model(), tokenizer, [{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="No conversations"):
        chat_replies(no_forward_model(), tokenizer, [])


def test_max_new_tokens_must_be_positive(no_forward_model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat_turn(no_forward_model(), tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=0)


# --- assistant_labels -----------------------------------------------------------------------------

LABEL_CONVERSATIONS = [*CONVERSATIONS, [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""},
                                        {"role": "user", "content": "Now say 'assistant'."},
                                        {"role": "assistant", "content": "assistant"}]]


@pytest.mark.parametrize("conversation", LABEL_CONVERSATIONS, ids=["1 turn", "2 turns", "3 turns", "empty reply"])
def test_assistant_labels_match_transformers_generation_marks(fresh_tokenizer, conversation):
    ids, labels = assistant_labels(fresh_tokenizer, conversation)
    marked = fresh_tokenizer.chat_template.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}", GENERATION_MARKS)
    assert marked != fresh_tokenizer.chat_template
    theirs = fresh_tokenizer.apply_chat_template(conversation, chat_template=marked, return_assistant_tokens_mask=True)
    assert ids[0].tolist() == theirs["input_ids"]
    assert (labels[0] != -100).int().tolist() == theirs["assistant_masks"]
    assert sum(theirs["assistant_masks"]) > 0


@pytest.mark.parametrize("conversation", LABEL_CONVERSATIONS[:3], ids=["1 turn", "2 turns", "3 turns"])
def test_assistant_labels_with_the_default_template(tokenizer, conversation):
    ids, labels = assistant_labels(tokenizer, conversation)
    assert ids.shape == labels.shape == (1, len(tokenizer.apply_chat_template(conversation, return_dict=False)))
    runs = [tokenizer.decode(run) for run in _runs(ids[0].tolist(), labels[0].tolist())]
    assert runs == [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]


@pytest.mark.parametrize("conversation", LABEL_CONVERSATIONS[:3], ids=["1 turn", "2 turns", "3 turns"])
def test_assistant_labels_with_a_llama2_style_template(fresh_tokenizer, conversation):
    fresh_tokenizer.chat_template = LLAMA2
    ids, labels = assistant_labels(fresh_tokenizer, conversation)
    runs = [fresh_tokenizer.decode(run) for run in _runs(ids[0].tolist(), labels[0].tolist())]
    # Llama 2 writes " reply </s>"; the space before the reply belongs to its first token.
    assert [r.strip() for r in runs] == [f"{m['content'].strip()} <|im_end|>" for m in conversation
                                         if m["role"] == "assistant"]
    assert "[INST]" not in "".join(runs) and "<<SYS>>" not in "".join(runs)


@pytest.mark.parametrize("conversation", [c[1:] if c[0]["role"] == "system" else c for c in LABEL_CONVERSATIONS[:3]],
                         ids=["1 turn", "2 turns", "3 turns"])
def test_assistant_labels_with_a_gemma_style_template(fresh_tokenizer, conversation):
    fresh_tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    fresh_tokenizer.chat_template = GEMMA
    ids, labels = assistant_labels(fresh_tokenizer, conversation)
    runs = [fresh_tokenizer.decode(run) for run in _runs(ids[0].tolist(), labels[0].tolist())]
    assert runs == [m["content"].strip() + "<end_of_turn>" for m in conversation if m["role"] == "assistant"]


@pytest.mark.slow
def test_model_loss_equals_cross_entropy_over_the_learned_positions(model, tokenizer):
    for conversation in LABEL_CONVERSATIONS[:3]:
        input_ids, labels = assistant_labels(tokenizer, conversation)
        with torch.no_grad():
            output = model(input_ids, labels=labels)
        # Position t predicts token t + 1: drop the last prediction and the first label.
        logits, targets = output.logits[0, :-1], labels[0, 1:]
        keep = targets != -100
        by_hand = -torch.log_softmax(logits[keep].double(), dim=-1).gather(1, targets[keep, None]).mean()
        assert keep.sum() == (labels != -100).sum()  # the first token is never learned, so nothing is lost
        assert torch.isclose(output.loss.double(), by_hand, atol=1e-5)
        everything = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:])
        assert not torch.isclose(output.loss, everything, atol=1e-3)  # the mask really changes the loss


def test_assistant_labels_refuse_an_empty_conversation(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        assistant_labels(tokenizer, [])


# --- the exercise checks of notebook 05 ---------------------------------------------------------------

def test_check_replies_says_which_way_the_cut_is_off(capsys):
    from workshop_utils.checks import CheckFailed, check_replies

    expected = ["Paris.", "Blue"]
    check_replies("cut", ["Paris.", "Blue"], expected)
    assert capsys.readouterr().out == "✔ cut\n"
    with pytest.raises(CheckFailed, match=r"reply 1 goes on past its end of turn \('<\|im_end\|><\|im_end\|>'\)"):
        check_replies("cut", ["Paris.", "Blue<|im_end|><|im_end|>"], expected)
    with pytest.raises(CheckFailed, match=r"reply 0 starts with part of the prompt \('assistant\\n'\)"):
        check_replies("cut", ["assistant\nParis.", "Blue"], expected)
    with pytest.raises(CheckFailed, match="reply 0 is 'aris.', only part of 'Paris.'"):
        check_replies("cut", ["aris.", "Blue"], expected)
    with pytest.raises(CheckFailed, match="you have 1 replies, expected a list of 2"):
        check_replies("cut", ["Paris."], expected)
    with pytest.raises(CheckFailed, match="reply 1: character 0 differs"):
        check_replies("cut", ["Paris.", "Red"], expected)


def test_check_labels_names_the_position_and_why(tokenizer):
    from workshop_utils.checks import CheckFailed, check_labels

    conversation = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    input_ids, labels = assistant_labels(tokenizer, conversation)
    check_labels("labels", labels, labels, tokenizer)
    everything = input_ids.clone()
    with pytest.raises(CheckFailed, match=r"position 0: you have 1 \('<\|im_start\|>'\), expected -100"):
        check_labels("labels", everything, labels, tokenizer)
    no_end = labels.clone()
    no_end[0, -2] = -100  # the <|im_end|> before the final newline
    with pytest.raises(CheckFailed, match=r"you have -100, expected 2 \('<\|im_end\|>'\): it is the end of the"):
        check_labels("labels", no_end, labels, tokenizer)
    with pytest.raises(CheckFailed, match="you have 3 labels"):
        check_labels("labels", [-100, -100, -100], labels, tokenizer)


def test_check_shifted_loss_recognises_the_usual_mistakes():
    from workshop_utils.checks import CheckFailed, check_shifted_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 7, 2, -100]])
    ce = torch.nn.functional.cross_entropy
    right = ce(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    check_shifted_loss("loss", right, logits, labels)
    check_shifted_loss("loss", float(right), logits[0], labels[0])
    with pytest.raises(CheckFailed, match="you did not shift"):
        check_shifted_loss("loss", ce(logits[0], labels[0], ignore_index=-100), logits, labels)
    with pytest.raises(CheckFailed, match="you summed"):
        check_shifted_loss("loss", ce(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"), logits, labels)
    with pytest.raises(CheckFailed, match="masked ones included"):
        check_shifted_loss("loss", right * 3 / 5, logits, labels)
    with pytest.raises(CheckFailed, match="expected a number"):
        check_shifted_loss("loss", "2.3", logits, labels)


def test_arithmetic_questions_are_different_repeatable_and_right():
    from workshop_utils.chat import arithmetic_questions, first_number, numbers

    questions = arithmetic_questions(56, seed=3)
    assert len({q for q, _ in questions}) == 56
    assert questions[:7] == arithmetic_questions(7, seed=3) != arithmetic_questions(7, seed=4)
    for question, answer in questions:  # recompute each answer from the question's own words
        given = [int(x) for x in question.replace("?", " ").split() if x.isdigit()]
        if "letters" in question:
            assert answer == len(question.split("'")[1])
        elif "legs" in question:
            assert answer == 4 * given[0]
        elif "+" in question or "more" in question:
            assert answer == given[0] + given[1]
        elif "times" in question:
            assert answer == given[0] * given[1]
        else:
            assert answer == given[0] - given[1]
    with pytest.raises(ValueError, match="at most 56"):
        arithmetic_questions(57)
    assert first_number("The answer is 16.") == 16 and first_number("1. Sam has 15") == 1
    assert numbers("3 + 8 = 11, not -2") == [3, 8, 11, -2]
    assert first_number("no number") is None
