"""`import dtb_ext` raises oneDNN's primitive cache (dtb_ext/onednn_cache.py) unless the user set its size, and with
it bf16 Linears at more token counts than the default 1,024 entries hold stop recompiling their kernels (counted
from oneDNN's own creation log, ONEDNN_VERBOSE=profile_create, not timed)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dtb_ext.onednn_cache import CAPACITY_VARIABLE, DEFAULT_CAPACITY
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT

# bf16 Linears at 1,200 token counts, twice: more shapes than oneDNN's default cache holds.
TOKEN_COUNTS = 1200
_TWO_ROUNDS = f"""
import torch
import dtb_ext
linear = torch.nn.Linear(32, 32).to(torch.bfloat16)
with torch.inference_mode():
    for round_ in range(2):
        for tokens in range(1, {TOKEN_COUNTS} + 1):
            linear(torch.zeros(tokens, 32, dtype=torch.bfloat16))
        print("end of round", round_, flush=True)
"""


def _python(code: str, capacity: str | None, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in (CAPACITY_VARIABLE, "ONEDNN_VERBOSE")}
    if capacity is not None:
        env[CAPACITY_VARIABLE] = capacity
    if verbose:
        env["ONEDNN_VERBOSE"] = "profile_create"
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def _cache_misses_per_round(capacity: str | None) -> list[int]:
    """oneDNN primitive creations that missed the cache in each of the two rounds of _TWO_ROUNDS."""
    output = _python(_TWO_ROUNDS, capacity, verbose=True).stdout
    misses = [0]
    for line in output.splitlines():
        if line.startswith("end of round"):
            misses.append(0)
        elif "create:cache_miss" in line:
            misses[-1] += 1
    if misses[0] == 0:
        pytest.skip("this torch build runs bf16 Linears without oneDNN primitives (nothing to cache)")
    return misses[:2]


def test_import_sets_the_default_capacity():
    code = f"import os, dtb_ext; print(os.environ[{CAPACITY_VARIABLE!r}])"
    assert _python(code, None).stdout.strip() == str(DEFAULT_CAPACITY)


def test_a_capacity_the_user_set_is_kept():
    code = f"import os, dtb_ext; print(os.environ[{CAPACITY_VARIABLE!r}])"
    assert _python(code, "100").stdout.strip() == "100"


def test_bf16_linears_at_many_token_counts_are_compiled_once():
    first, second = _cache_misses_per_round(None)
    assert first > 1024  # more kernels than oneDNN's default cache holds
    assert second == 0


def test_onednn_default_capacity_recompiles_them():
    # The same workload under oneDNN's own default: what dtb_ext's default avoids.
    _, second = _cache_misses_per_round("1024")
    assert second > TOKEN_COUNTS - 1024
