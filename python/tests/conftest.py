"""Shared fixtures of the Python tests: the default model, the corpus, the CLI.

The tests need the default model and corpus (scripts/setup.sh) and the command-line tool
built in build/ (numbers are compared with it). Missing ones skip the tests, or fail them
under SPILLWAY_REQUIRE_MODEL=1 (as scripts/test.sh runs them). SPILLWAY_CLI points at
another build of the tool.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import spillway

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = pathlib.Path(os.environ.get("SPILLWAY_MODEL", ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
CORPUS = ROOT / "data/austen.txt"
CLI = pathlib.Path(os.environ.get("SPILLWAY_CLI", ROOT / "build/bin/spillway"))
REQUIRE = os.environ.get("SPILLWAY_REQUIRE_MODEL") == "1"


def _need(path: pathlib.Path, what: str) -> None:
    if not path.exists():
        msg = f"{what} not found: {path}"
        if REQUIRE:
            pytest.fail(msg + " (SPILLWAY_REQUIRE_MODEL=1)")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def model() -> spillway.Model:
    _need(MODEL, "model")
    return spillway.Model.load(MODEL)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    _need(CORPUS, "corpus")
    # The opening of Sense and Sensibility: enough for a few hundred tokens.
    return CORPUS.read_text(encoding="utf-8")[:6000]


@pytest.fixture(scope="session")
def stream(model: spillway.Model, corpus_text: str) -> np.ndarray:
    ids = model.tokenize(corpus_text)
    assert len(ids) >= 256
    return ids[:256]


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    _need(CLI, "spillway command-line tool (build it into build/)")
    return CLI
