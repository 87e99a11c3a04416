"""Shared fixtures: a throwaway tokenizer trained in-process and a tiny model config."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (`make test`): the worker and the stage processes it starts use one thread each instead
    # of every process spinning up threads for all cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if not torch.cuda.is_available():
    # Triton kernels run in its CPU interpreter; the flag must be set before any kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_xdist_make_scheduler(config, log):
    """Under --dist loadgroup (`make test`): the groups of tests/groups.py, each on one worker."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    from tests.groups import xdist_group

    class GroupScheduling(LoadScopeScheduling):
        """pytest-xdist's loadgroup with the groups of tests/groups.py: a group is one unit of work, any other test
        its own."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def stories():
    from llm_core.data import synthetic

    texts, _ = synthetic.generate_stories(7, 400)
    return texts


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, stories):
    from llm_core.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(stories, 512, out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from llm_core.data.tokenizer import Tokenizer

    return Tokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="session")
def served_models(tmp_path_factory, tokenizer_dir):
    """A `models/` folder as the pipeline leaves it: a tiny random `sft` model beside `tokenizer`."""
    import shutil

    from llm_core.model.io import write_model
    from llm_core.model.transformer import Transformer
    from tests.helpers import tiny_model_config

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tokenizer_dir, root / "tokenizer")
    torch.manual_seed(0)
    # untied: a random tied model mostly repeats its input token, which makes dull (and stop-free) test output
    write_model(root / "sft", Transformer(tiny_model_config(vocab_size=512, max_seq_len=128, tie_embeddings=False)))
    return root
