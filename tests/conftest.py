"""Shared test setup.

Tiny models run thousands of small matmuls; with several torch threads on a 2-core
machine they spend most of their time spinning (measured: 500 ms vs 2 ms per forward
when other processes compete). One thread makes the unit tier fast and steady; the
end-to-end tier raises it again for the real model.
"""

from pathlib import Path

import pytest
import torch

from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _keep_threads():
    """The end-to-end tier raises the thread count for the real model; later tests must not
    inherit it (results of float32 products can depend on it)."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and the character tokenizer saved as a model folder (for studies)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
