"""`dtb demo --runtime`: rows of the exported graph in OpenVINO and ONNX Runtime beside the PyTorch rows, labelled
with their runtime and precision, scored on the same questions (fp32: the same F1 as PyTorch), and a plain error
where a runtime's package is not installed. A tiny random QA model keeps the export short; timings are not
checked."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest

from dtb_ext.cli import main
from dtb_ext.demo.runners import check_runtimes
from dtb_ext.search.front import Front
from repo_paths import SHARED_SQUAD_DIR
from tiny_qa import save_tiny_qa_model

DEV = os.path.join(SHARED_SQUAD_DIR, "dev-a-v1.1.json")
needs_dev = pytest.mark.skipif(not os.path.isfile(DEV), reason="shared SQuAD data not found")
CONFIGS = [(384, 384), (300, 200), (200, 100), (128, 64)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random BERT QA model with a front of absolute configs beside it (the demo picks all four)."""
    directory = save_tiny_qa_model(str(tmp_path_factory.mktemp("tiny-qa")))
    results = [(config, dict(f1=f1, exact_match=f1 - 10, macs=float(sum(config)), latency_ms=None))
               for config, f1 in zip(CONFIGS, (80.0, 79.5, 78.0, 73.0))]
    identity = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
    Front.build("macs", results, CONFIGS[0], identity).save(directory)
    return directory


def _demo(model_dir: str, out: str, *extra: str) -> list[str]:
    return ["demo", "--model", model_dir, "--data", DEV, "--questions", "10", "--latency-features", "2",
            "--out", out, "--no-progress", *extra]


@pytest.mark.slow
@needs_dev
def test_runtime_rows_are_labelled_and_score_as_pytorch(tiny_model_dir, tmp_path, capsys):
    for package in ("openvino", "onnx", "onnxruntime"):
        pytest.importorskip(package, reason=f"{package} is not installed (the openvino extra)")
    out = str(tmp_path / "demo")
    assert main(_demo(tiny_model_dir, out, "--runtime", "onnxruntime,torch,openvino", "--precision", "bf16")) == 0
    captured = capsys.readouterr()
    record = json.loads(open(os.path.join(out, "demo.json")).read())
    settings = record["settings"]
    # RUNTIMES' order whatever the order given; ONNX Runtime runs fp32 only, and says so
    variants = ["torch fp32", "torch bf16", "openvino fp32", "openvino bf16", "onnxruntime fp32"]
    assert settings["variants"] == variants and settings["reference"] == "torch fp32"
    assert settings["runtimes"] == ["torch", "openvino", "onnxruntime"]
    assert set(settings["runtime_versions"]) == {"openvino", "onnxruntime"}
    assert "onnxruntime runs fp32: no onnxruntime bf16 row" in captured.err
    assert [row["length_config"] for row in record["rows"]] == [list(config) for config in CONFIGS]
    for row in record["rows"]:
        assert list(row["variants"]) == variants
        for name, measured in row["variants"].items():
            assert f"{measured['runtime']} {measured['precision']}" == name
            assert all(measured["latency_ms"][p] > 0 for p in ("dynamic", "max_length"))
        torch_fp32 = row["variants"]["torch fp32"]
        assert row["f1"] == torch_fp32["f1"] and row["speedup"] == torch_fp32["speedup"]
        # the exported fp32 graph equals the patched model within 1e-4 in its logits: the same answers
        for graph in ("openvino fp32", "onnxruntime fp32"):
            assert row["variants"][graph]["f1"] == pytest.approx(torch_fp32["f1"], abs=1e-9)
            assert row["variants"][graph]["exact_match"] == pytest.approx(torch_fp32["exact_match"], abs=1e-9)
    full = record["rows"][0]["variants"]
    assert all(full[name]["speedup_same_precision"] == {"dynamic": 1.0, "max_length": 1.0} for name in variants)
    table = captured.out
    assert "runtime     prec" in table
    assert f"openvino {settings['runtime_versions']['openvino']} and onnxruntime " in table
    for runtime, precision in (name.split() for name in variants):
        assert f" {runtime:<11} {precision:<5} " in table


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_a_missing_runtime_package_says_which_extra_to_install(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                               runtime):
    monkeypatch.setitem(sys.modules, runtime, None)  # as if not installed: find_spec and import both fail
    assert main(_demo(tiny_model_dir, str(tmp_path / "demo"), "--runtime", f"torch,{runtime}")) == 2
    error = capsys.readouterr().err
    assert re.search(rf"dtb demo: error: runtime {runtime} needs the dtb_ext\[openvino\] extra, and (\w+, )*{runtime} "
                     r"(is|are) not installed", error)
    assert 'pip install "dtb_ext[openvino]"' in error and "--runtime torch runs without it" in error
    assert not os.path.exists(tmp_path / "demo")


def test_an_unknown_runtime_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--runtime", "torch,tensorrt"])
    assert exit_info.value.code == 2
    assert "expected a comma-separated list of torch, openvino, onnxruntime, got 'torch,tensorrt'" \
        in capsys.readouterr().err


def test_graph_runtimes_run_on_the_cpu_only():
    with pytest.raises(ValueError, match="--runtime openvino runs on the CPU, got --device cuda"):
        check_runtimes(["torch", "openvino"], ["fp32"], "cuda")
