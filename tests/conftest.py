"""Shared fixtures: the default model is loaded once per test session."""

import pytest

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
