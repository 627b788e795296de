"""Setup shared by every area folder of tests/ (ops/, models/, qa/, ...).

pytest's default import mode puts only each test file's own folder on sys.path, so this file puts tests/ there too:
the helper modules that sit here (tiny_qa, serving, repo_paths) import the same way from every folder. The fixtures
below are the ones several areas use; a test file may still define its own fixture of the same name (a tiny model
directory with a front beside it, say), which then wins for that file. The CUDA skip is the repository's
conftest.py, one level up.
"""
from __future__ import annotations

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture(scope="module")
def tokenizer():
    """The MiniLM (bert-base-uncased vocabulary) tokenizer."""
    from tiny_qa import minilm_tokenizer

    return minilm_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A directory holding the tiny random QA model (tiny_qa.save_tiny_qa_model) and the MiniLM tokenizer."""
    from tiny_qa import save_tiny_qa_model

    return save_tiny_qa_model(str(tmp_path_factory.mktemp("tiny_qa")))
