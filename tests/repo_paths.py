"""Paths the tests share, computed once here so that a test file's depth under tests/ does not matter."""
from __future__ import annotations

import os

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
# Small files the tests read (tests/data/).
TEST_DATA_DIR = os.path.join(TESTS_DIR, "data")
# The SQuAD files beside the repository (../shared/data/squad; docs/design.md §5), absent on some machines.
SHARED_SQUAD_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "squad")
