"""The run-time choice of the CPU kernels' instruction set (csrc/cpu_capability.h): kernel_info() reports it, each
set this CPU runs can be forced with ATEN_CPU_CAPABILITY and then matches the reference ops, an unknown value is
ignored with a warning, and no code shared by the copies needs more than the baseline instruction set. On a CPU
with AMX, the bf16 attention's AMX path is reported and DTB_ATTENTION_AMX=0 switches it off.
(Forcing a set the CPU lacks is covered for every CPU by tests/cpp/test_cpu_capability.cpp.)"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from dtb_ext import ops
from repo_paths import REPO_ROOT

CAPABILITIES = ["default", "avx2", "avx512"]
ROOT = REPO_ROOT

pytestmark = pytest.mark.skipif(not ops.has_kernels(), reason="dtb_ext._C is not built")


def _run_python(
    code: str, capability: str | None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("ATEN_CPU_CAPABILITY", "DTB_ATTENTION_AMX")}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    env.update(extra_env or {})
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)


def _kernel_info_under(capability: str | None) -> tuple[dict, str]:
    """kernel_info() of a fresh process with ATEN_CPU_CAPABILITY set to `capability` (None: unset), and its stderr."""
    result = _run_python("import json; from dtb_ext import ops; print(json.dumps(ops.kernel_info()))", capability)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _runnable(info: dict) -> list[str]:
    return [name for name in info["cpu_capabilities_built"]
            if CAPABILITIES.index(name) <= CAPABILITIES.index(info["cpu_supports"])]


def test_kernel_info_reports_the_widest_set_built_that_this_cpu_runs():
    info, _ = _kernel_info_under(None)
    assert info["kernels"] is True and info["requested"] == "" and info["warning"] == ""
    assert info["cpu_capabilities_built"][0] == "default"
    assert set(info["cpu_capabilities_built"]) <= set(CAPABILITIES)
    assert info["cpu_capability"] == _runnable(info)[-1]
    assert isinstance(info["cuda_built"], bool)
    if ops.torch.version.cuda is None:
        assert info["cuda_built"] is False


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_each_set_this_cpu_runs_can_be_forced_and_matches_the_reference(capability):
    info, _ = _kernel_info_under(None)
    if capability not in _runnable(info):
        pytest.skip(f"{capability} kernels are not built, or this CPU cannot run them (it runs {info['cpu_supports']})")
    forced, stderr = _kernel_info_under(capability)
    assert forced["cpu_capability"] == capability and forced["requested"] == capability
    assert forced["warning"] == "" and "dtb_ext:" not in stderr
    # The op tests, every one of them against dtb_ext.reference, in a process running this set's kernels.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops/test_ops.py",
                             "tests/ops/test_attention_op.py", "tests/ops/test_int8_rows_op.py"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_amx_attention_is_reported_and_can_be_switched_off():
    info, _ = _kernel_info_under(None)
    assert isinstance(info["cpu_amx_attention"], bool)
    assert not info["cpu_amx_attention"] or info["cpu_bf16_dot_products"]
    result = _run_python("import json; from dtb_ext import ops; print(json.dumps(ops.kernel_info()))", None,
                         {"DTB_ATTENTION_AMX": "0"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["cpu_amx_attention"] is False


@pytest.mark.slow
def test_without_amx_the_bf16_dot_product_path_matches_the_reference():
    """On a CPU with AMX the bf16 attention tests run the AMX path; this reruns them on the AVX512-BF16 dot
    products, the path of CPUs without AMX."""
    info, _ = _kernel_info_under(None)
    if not info["cpu_amx_attention"]:
        pytest.skip("the bf16 attention kernel does not use AMX on this CPU: its tests already run the other path")
    env = {**os.environ, "DTB_ATTENTION_AMX": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/ops/test_attention_op.py"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_an_unknown_request_is_ignored_with_a_warning():
    unforced, _ = _kernel_info_under(None)
    info, stderr = _kernel_info_under("sse4")
    assert info["cpu_capability"] == unforced["cpu_capability"] and info["requested"] == "sse4"
    expected = (
        "must be default, avx2 or avx512 to choose the dtb CPU kernels, got 'sse4': ignored; "
        f"using {unforced['cpu_capability']}"
    )
    assert expected in info["warning"] and expected in stderr


# Names of the per-set copies: ATen's at::vec::AVX2 / AVX512 and the kernel files' dtb::AVX2 / dtb::AVX512.
PER_SET_NAMESPACE = re.compile(r"\b(?:AVX2|AVX512)::")


@pytest.mark.skipif(shutil.which("objdump") is None or sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="needs objdump and a Linux x86-64 build")
def test_no_shared_function_needs_more_than_the_baseline():
    """Where the per-set copies share a function (an inline function or template instance outside the per-set
    namespaces), the linker keeps one copy for all of them; it must be the baseline one, or the DEFAULT kernels
    would run AVX code on a CPU without it (setup.py's link order ensures this). Local functions are each
    copy's own and may use its set."""
    library = ops._C.__file__
    disassembly = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", library], capture_output=True,
                                 text=True, check=True).stdout
    symbols = subprocess.run(["nm", "-C", "--defined-only", library], capture_output=True, text=True, check=True).stdout
    shared = {line.split(" ", 2)[2] for line in symbols.splitlines()
              if len(line.split(" ", 2)) == 3 and line.split(" ", 2)[1] in ("T", "W", "V", "u", "i")}
    offenders = []
    function = None
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        if function in shared and not PER_SET_NAMESPACE.search(function) and _beyond_baseline(line):
            offenders.append(function)
            function = None  # one report per function
    assert offenders == [], f"shared functions with AVX code: {offenders[:10]}"


def _beyond_baseline(line: str) -> bool:
    """Whether an objdump line (AT&T syntax) holds an instruction baseline x86-64 code never uses: VEX/EVEX-encoded
    ones (AVX, AVX2, FMA, F16C, AVX-512: mnemonics starting with v), AVX-512 mask instructions and registers, or
    256/512-bit registers."""
    parts = line.split("\t")
    if len(parts) < 2:
        return False
    instruction = parts[-1].strip()
    mnemonic = instruction.split(" ", 1)[0]
    return bool(re.match(r"v[a-z]", mnemonic) or re.match(r"k(mov|or|and|xor|not|shift|test|unpck|add)", mnemonic)
                or re.search(r"%[yz]mm|%k[0-7]", instruction))
