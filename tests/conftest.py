"""Shared fixtures: the default model (loaded once per test session), tiny random models built from a config,
and a stand-in model that fails the test if anything runs it."""

from types import SimpleNamespace

import pytest
import torch

from workshop_utils import load_model, setup_notebook


@pytest.fixture(scope="session")
def model_and_tokenizer():
    """The default model on CPU, and its tokenizer."""
    setup_notebook(seed=0)
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def model(model_and_tokenizer):
    return model_and_tokenizer[0]


@pytest.fixture(scope="session")
def tokenizer(model_and_tokenizer):
    return model_and_tokenizer[1]


# A few layers of a few heads each: the same code paths as a real model, in milliseconds. Tests override what
# they measure (heads, layers, vocabulary, context, tied embeddings).
TINY_CONFIGS = {
    "llama": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128),
    "qwen2": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128),
    # learned absolute positions: wrong position ids would show
    "gpt2": dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128),
}


def build_tiny(arch: str = "llama", **overrides):
    """A randomly initialised causal LM of the given architecture (seed 0), in eval mode."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "gpt2": (GPT2Config, GPT2LMHeadModel)}
    config_class, model_class = classes[arch]
    torch.manual_seed(0)
    return model_class(config_class(**{**TINY_CONFIGS[arch], **overrides})).eval()


@pytest.fixture(scope="session")
def tiny_model():
    """The factory: tiny_model("llama", num_attention_heads=6, ...) builds a fresh tiny random model."""
    return build_tiny


class NoForwardModel:
    """Has what the input checks read (config, generation_config, device); fails the test if it is run."""

    device = torch.device("cpu")

    def __init__(self, **config):
        self.config = SimpleNamespace(**config)
        self.generation_config = SimpleNamespace(eos_token_id=1, pad_token_id=1)

    def __call__(self, *args, **kwargs):
        raise AssertionError("the model ran before the input was checked")

    forward = generate = __call__


@pytest.fixture(scope="session")
def no_forward_model():
    """The factory: no_forward_model(max_position_embeddings=64, vocab_size=96) is a model that must not run."""
    return NoForwardModel


class CountingModel:
    """Wraps a model and records each forward pass as (positions fed, positions already in the cache).

    With a clock (anything with a `now` in seconds), each pass also moves it on by the next of `seconds`: a
    timer that reads that clock then measures known times, whatever the machine's speed.
    """

    def __init__(self, model, clock=None, seconds=()):
        self.model, self.calls = model, []
        self.config, self.device = model.config, model.device
        self.clock, self.seconds = clock, iter(seconds)

    @property
    def fed(self) -> list[int]:
        return [fed for fed, _ in self.calls]

    def __call__(self, input_ids, past_key_values=None, **kwargs):
        cached = 0 if past_key_values is None else past_key_values.get_seq_length()
        self.calls.append((input_ids.shape[-1], cached))
        if self.clock is not None:
            self.clock.now += next(self.seconds)
        return self.model(input_ids, past_key_values=past_key_values, **kwargs)


@pytest.fixture(scope="session")
def counting_model():
    """The factory: counting_model(model, clock=None, seconds=()) records what each forward pass was given."""
    return CountingModel
