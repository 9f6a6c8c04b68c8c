"""Issue 24's bad inputs for the modules of notebooks 08, 09 and 14 (llama, inside, bpe, bpe_lab and their checks):
each is a clear error that names the fix, raised before any forward pass (a patched llama.block or a stand-in
model fails the test if it runs) or before any file is written."""

import pytest
import torch

from workshop_utils import bpe, bpe_lab, inside, llama
from workshop_utils.checks import check_decoder, check_encoder, check_layer0_prediction, check_logits, \
    check_pre_tokenizer

VOCAB = 96


class FakeEncoding(dict):
    """What tokenizer(text, return_tensors='pt') returns, for the mapping part the normaliser reads."""


@pytest.fixture
def tiny(tiny_model):
    return tiny_model("llama", vocab_size=VOCAB)


@pytest.fixture
def weights(tiny, monkeypatch):
    """The tiny model's weights; any decoder layer that runs fails the test."""
    def no_block(*args, **kwargs):
        raise AssertionError("a layer ran before the input was checked")

    monkeypatch.setattr(llama, "block", no_block)
    return llama.from_model(tiny)


@pytest.fixture
def stand_in(no_forward_model):
    return no_forward_model(vocab_size=VOCAB, max_position_embeddings=64, _attn_implementation="eager")


BAD_IDS = [
    ("The capital of France is", "is a string.*Fix: tokenize it first"),
    ([[1, 2, 3], [4, 5]], "different lengths. Fix: pad them"),
    (FakeEncoding(input_ids=torch.tensor([[1, 2], [0, 3]]), attention_mask=torch.tensor([[1, 1], [0, 1]])),
     "padded batch.*Fix"),
    (object(), "must be token ids, got object. Fix"),
    ([], "empty.*Fix"),
    (torch.rand(1, 4), "must be integers.*Fix"),
    (torch.zeros(1, 2, 3, dtype=torch.long), r"shape \(1, 2, 3\).*Fix"),
]


# --- notebook 08: llama.py -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, fix", BAD_IDS + [([[5, VOCAB]], f"Token id {VOCAB} .*outside.*Fix"),
                                               ([[-1, 3]], "Token id -1 .*outside.*Fix")])
@pytest.mark.parametrize("call", ["forward", "greedy_generate", "trace"])
def test_bad_ids_to_the_hand_written_forward(weights, call, ids, fix):
    run = {"forward": lambda: llama.forward(weights, ids), "greedy_generate": lambda: llama.greedy_generate(weights, ids, 3),
           "trace": lambda: inside.trace(weights, ids)}[call]
    with pytest.raises(ValueError, match=fix):
        run()


@pytest.mark.parametrize("given, fix", [
    ("model_and_tokenizer", r"tuple is not a Llama.*Fix: load_model\(\) returns \(model, tokenizer\)"),
    ("text", "str is not a Llama model.*Fix"),
])
def test_from_model_refuses_what_is_no_model(tiny, given, fix):
    with pytest.raises(ValueError, match=fix):
        llama.from_model((tiny, None) if given == "model_and_tokenizer" else "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_forward_refuses_the_model_itself_and_a_foreign_cache(tiny, weights):
    with pytest.raises(ValueError, match=r"what llama.from_model returns, got LlamaForCausalLM.*Fix: weights = "):
        llama.forward(tiny, torch.tensor([[4]]))
    with pytest.raises(ValueError, match=r"cache must be the Cache.*got DynamicCache.*Fix"):
        from transformers import DynamicCache
        llama.forward(weights, torch.tensor([[4]]), DynamicCache())


@pytest.mark.parametrize("eos, fix", [("2", "eos_token_id must be a token id.*Fix"),
                                      ([2.5], "eos_token_id must be a token id.*Fix")])
def test_greedy_generate_refuses_an_eos_that_is_no_id(weights, eos, fix):
    with pytest.raises(ValueError, match=fix):
        llama.greedy_generate(weights, torch.tensor([[4, 5]]), 3, eos_token_id=eos)


@pytest.mark.parametrize("n", [-3, 2.5])
def test_greedy_generate_refuses_bad_counts(weights, n):
    with pytest.raises(ValueError, match="max_new_tokens"):
        llama.greedy_generate(weights, torch.tensor([[4, 5]]), n)


def test_greedy_generate_still_takes_a_tensor_eos(tiny):  # valid input keeps its behaviour
    weights = llama.from_model(tiny)
    prompt = torch.tensor([[4, 5, 6]])
    first = int(llama.greedy_generate(weights, prompt, 1)[0, -1])
    assert torch.equal(llama.greedy_generate(weights, prompt, 5, eos_token_id=torch.tensor(first)),
                       llama.greedy_generate(weights, prompt, 5, eos_token_id=[first]))
    assert llama.greedy_generate(weights, prompt, 5, eos_token_id=[first]).shape[1] == 4  # it stopped there


def test_check_logits_refuses_forwards_tuple(tiny):
    weights = llama.from_model(tiny)
    out = llama.forward(weights, torch.tensor([[4, 5]]))
    with pytest.raises(ValueError, match=r"tuple where logits were expected.*Fix: logits, cache = "):
        check_logits("logits", out, out[0])


# --- notebook 09: inside.py --------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, fix", BAD_IDS + [([[5, VOCAB]], "outside.*Fix"),
                                               (torch.tensor([[1, 2], [3, 4]]), "one sequence.*Fix: pass one row")])
@pytest.mark.parametrize("call", [inside.logit_lens, inside.attention_patterns])
def test_bad_ids_to_the_model_readers(stand_in, call, ids, fix):
    with pytest.raises(ValueError, match=fix):
        call(stand_in, ids)


@pytest.mark.parametrize("ablate, fix", [({0: 1}, r"dict \{layer: \[heads\]\}.*Fix.*a list even for one head"),
                                         ([0, 1], r"dict \{layer: \[heads\]\}.*Fix"),
                                         ({5: [0]}, "No head.*Fix"), ({0: [-1]}, "No head.*Fix")])
def test_trace_refuses_bad_ablations(weights, ablate, fix):
    with pytest.raises(ValueError, match=fix):
        inside.trace(weights, torch.tensor([[4, 5]]), ablate=ablate)


def test_surprisal_refuses_logits_of_other_ids():
    logits = torch.randn(1, 5, VOCAB)
    with pytest.raises(ValueError, match=r"do not fit 4 input ids.*Fix"):
        inside.surprisal(logits, torch.tensor([[1, 2, 3, 4]]))
    with pytest.raises(ValueError, match=r"do not fit 1 input ids.*at least 2.*Fix"):  # nan perplexity otherwise
        inside.surprisal(logits[:, :1], torch.tensor([[1]]))
    with pytest.raises(ValueError, match="outside.*Fix"):
        inside.surprisal(logits, torch.tensor([[1, 2, 3, 4, VOCAB]]))


@pytest.mark.parametrize("call, fix", [
    (lambda: inside.kv_groups(9, 4), "cannot be shared equally.*Fix"),  # silently dropped head 8
    (lambda: inside.kv_groups(9, 0), "cannot be shared equally.*Fix"),
    (lambda: inside.top_heads(torch.rand(2, 3), k=7), "k must be a whole number from 1 to 6.*Fix"),
    (lambda: inside.top_heads(torch.rand(2, 3), k=0), "k must be.*Fix"),
    (lambda: inside.head_scores(torch.rand(2, 3, 8, 8), period=2.5), "period 2.5 does not fit.*Fix"),
    (lambda: inside.repeated_random_tokens(200, 2.5), "length must be positive.*Fix"),
])
def test_head_helpers_refuse_bad_counts(call, fix):
    with pytest.raises(ValueError, match=fix):
        call()


def test_layer0_check_refuses_a_lens_of_other_ids():
    with pytest.raises(ValueError, match=r"do not fit 3 input ids.*Fix"):
        check_layer0_prediction("same", torch.randn(4, 5, VOCAB), torch.tensor([[1, 2, 3]]))


# --- notebook 14: bpe.py, bpe_lab.py -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fix", [
    (dict(vocab_size=100), "Fix: ask for at least 256"),
    (dict(vocab_size="300"), "vocab_size must be a whole number.*Fix"),
    (dict(vocab_size=300, special_tokens="<|endoftext|>"), r"list of non-empty strings.*Fix: wrap one token in a list"),
    (dict(vocab_size=300, special_tokens=[""]), "list of non-empty strings.*Fix"),
])
def test_train_refuses_bad_settings(kwargs, fix):
    with pytest.raises(ValueError, match=fix):
        bpe.train("hello world " * 20, **kwargs)


@pytest.mark.parametrize("ids, fix", [("hello", "is a string.*Fix"), ([[1, 2], [3, 4]], "one sequence.*Fix"),
                                      ([1.5], "must be integers.*Fix"), ([10_000], "not in this vocabulary.*Fix")])
def test_decode_refuses_what_is_no_ids(ids, fix):
    tokenizer = bpe.train("hello world " * 20, 260)
    with pytest.raises(ValueError, match=fix):
        tokenizer.decode(ids)


def test_decode_still_takes_lists_tensors_and_nothing():
    tokenizer = bpe.train("hello world " * 20, 260)
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(ids) == tokenizer.decode(torch.tensor(ids)) == "hello world"
    assert tokenizer.decode([]) == ""


def test_build_corpus_refuses_a_folder_that_is_no_checkout(tmp_path):
    (tmp_path / "README.md").write_text("just a readme\n")
    out = tmp_path / "corpus.txt"
    out.write_text("the corpus\n")
    with pytest.raises(ValueError, match="no lessons.*Fix: pass the root of a checkout"):
        bpe_lab.build_corpus(tmp_path, out)
    assert out.read_text() == "the corpus\n"  # not replaced by a nearly empty one


def test_bytes_per_token_refuses_an_empty_text():
    with pytest.raises(ValueError, match="non-empty text.*Fix"):
        bpe_lab.bytes_per_token(lambda text: [], "")


@pytest.mark.parametrize("check, arg", [(check_encoder, "texts"), (check_pre_tokenizer, "texts"),
                                        (check_decoder, "id_lists")])
def test_bpe_checks_refuse_a_single_item(tokenizer, check, arg):
    single = "Hello world" if arg == "texts" else [9906, 1917]
    learner = lambda x: pytest.fail("the learner's function ran before the input was checked")  # noqa: E731
    with pytest.raises(ValueError, match=f"{arg} must be a non-empty list.*Fix: wrap a single one in a list"):
        check("exercise", learner, tokenizer, single)
