"""A/B timing of the int8 Linear ops' two GEMMs (issue 28): the same op on the same inputs with the weight packed for
AMX tiles (`dtb::int8_amx_pack_weight`) and for oneDNN (`onednn::qlinear_prepack`), alternated call by call in one
process; medians. bench/REPORT-int8-amx-gemm.md has the numbers and the command. Run it alone on the cores (no
other heavy job), as every timing here.

    .venv/bin/python bench/int8_amx_gemm.py ops    # the three ops, M x (K, N) grid
    .venv/bin/python bench/int8_amx_gemm.py model  # the default QA model, B=1 and B=32

Not a test: no timing is asserted. Needs the compiled kernels and a CPU where `kernel_info()["cpu_amx_int8"]`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import dtb_ext
from dtb_ext import ops, reference

OP_ROWS = (8, 182, 5800)
OP_SHAPES = ((384, 1152), (384, 384), (384, 1536), (1536, 384))


def _median_pair(first, second, repetitions: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of first() and second(), called alternately (first, second, first, ...)."""
    for _ in range(warmup):
        first()
        second()
    times = ([], [])
    for _ in range(repetitions):
        for index, call in enumerate((first, second)):
            start = time.perf_counter()
            call()
            times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _op_calls(rows: int, in_features: int, out_features: int, weight):
    """The three ops on one layer's inputs with `weight` (either packing): name -> call."""
    generator = torch.Generator().manual_seed(rows + in_features + out_features)
    quantized, scale = reference.quantize_rows(torch.randn(rows, in_features, generator=generator))
    weight_scale = torch.rand(out_features, generator=generator) * 1e-2 + 1e-3
    zero_points = torch.zeros(out_features, dtype=torch.int64)
    bias = torch.randn(out_features, generator=generator)
    residual = torch.randn(rows, out_features, generator=generator).bfloat16()
    gamma, beta = torch.ones(out_features).bfloat16(), torch.zeros(out_features).bfloat16()
    return {
        "int8_linear": lambda w: torch.ops.dtb.int8_linear(quantized, scale, w, weight_scale, zero_points, bias,
                                                           residual, "none", torch.bfloat16),
        "int8_linear_quantize": lambda w: torch.ops.dtb.int8_linear_quantize(
            quantized, scale, w, weight_scale, zero_points, bias, "gelu", torch.bfloat16, None),
        "int8_linear_layer_norm": lambda w: torch.ops.dtb.int8_linear_layer_norm(
            quantized, scale, w, weight_scale, zero_points, bias, residual, gamma, beta, 1e-12, torch.bfloat16,
            True, None),
    }


def bench_ops(rows_list, shapes, ops_names, repetitions_for) -> list[dict]:
    results = []
    for in_features, out_features in shapes:
        weight = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8,
                               generator=torch.Generator().manual_seed(0))
        amx = ops.int8_amx_pack_weight(weight)
        onednn = torch.ops.onednn.qlinear_prepack(weight, None)
        for rows in rows_list:
            calls = _op_calls(rows, in_features, out_features, weight)
            for name in ops_names:
                call = calls[name]
                repetitions = repetitions_for(rows)
                amx_s, onednn_s = _median_pair(lambda: call(amx), lambda: call(onednn), repetitions)
                row = {"op": name, "M": rows, "K": in_features, "N": out_features, "amx_us": amx_s * 1e6,
                       "onednn_us": onednn_s * 1e6, "ratio": onednn_s / amx_s, "repetitions": repetitions}
                results.append(row)
                print(f"| {name} | {rows} | {in_features} | {out_features} | {row['amx_us']:.1f} | "
                      f"{row['onednn_us']:.1f} | {row['ratio']:.2f} |", flush=True)
    return results


def _int8_model(use_amx: bool):
    from dtb_ext.data_paths import DEFAULT_MODEL_DIR
    from dtb_ext.precision import int8
    from dtb_ext.qa.model import load_qa_model

    model, tokenizer = load_qa_model(DEFAULT_MODEL_DIR)
    dtb_ext.patch(model).eval()
    with int8.gemm_packing("amx" if use_amx else "onednn"):
        model8 = dtb_ext.precision.prepare_for_precision(model, "int8")
    return model8, tokenizer


def bench_model(batches, repetitions_for, tokens: int = 182) -> list[dict]:
    from dtb_ext.precision import int8

    results = []
    amx_model, tokenizer = _int8_model(True)
    onednn_model, _ = _int8_model(False)
    vocabulary = tokenizer.vocab_size
    for batch in batches:
        generator = torch.Generator().manual_seed(batch)
        input_ids = torch.randint(1000, vocabulary, (batch, tokens), generator=generator)
        input_ids[:, 0] = tokenizer.cls_token_id
        input_ids[:, -1] = tokenizer.sep_token_id
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones(batch, tokens, dtype=torch.int64)}
        with torch.inference_mode():
            # Pack each model's weights under its own choice (the concatenated query/key/value layers are packed at
            # their first forward), then check which GEMM each one runs.
            with int8.gemm_packing("amx"):
                expected = amx_model(**inputs)
            with int8.gemm_packing("onednn"):
                other = onednn_model(**inputs)
            # (the separate query/key/value layers never pack: they run concatenated)
            formats = {name: {_format(layer) for layer in _int8_layers(model)} - {"unpacked"}
                       for name, model in (("amx", amx_model), ("onednn", onednn_model))}
            assert formats == {"amx": {"amx"}, "onednn": {"onednn"}}, formats
            same = all(torch.equal(a, b) for a, b in zip(expected.values(), other.values()))
            repetitions = repetitions_for(batch)
            amx_s, onednn_s = _median_pair(lambda: amx_model(**inputs), lambda: onednn_model(**inputs), repetitions)
        row = {"B": batch, "L": tokens, "amx_ms": amx_s * 1e3, "onednn_ms": onednn_s * 1e3,
               "ratio": onednn_s / amx_s, "repetitions": repetitions, "outputs_equal": same}
        results.append(row)
        print(f"| {batch} x {tokens} | {row['amx_ms']:.2f} | {row['onednn_ms']:.2f} | {row['ratio']:.2f} | "
              f"{repetitions} | {same} |", flush=True)
    return results


def _int8_layers(model):
    """Every Int8Linear of the model and of its encoder's packed-linear caches (the concatenated projections)."""
    from dtb_ext.precision.int8 import Int8Linear

    layers = [module for module in model.modules() if isinstance(module, Int8Linear)]
    for module in model.modules():
        cache = getattr(module, "_linears", None)
        for entry in getattr(cache, "_int8_entries", {}).values():
            layers.append(entry.layer)
    return layers


def _format(layer) -> str:
    packed = layer._packed
    if packed is None:
        return "unpacked"
    if packed.weight is None:
        return "torch._int_mm"
    return "onednn" if packed.weight.is_mkldnn else "amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ops", "model"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="*", default=list(OP_ROWS))
    parser.add_argument("--ops", nargs="*", default=["int8_linear", "int8_linear_quantize", "int8_linear_layer_norm"])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = ops.kernel_info()
    if not info.get("cpu_amx_int8"):
        raise SystemExit(f"AMX int8 is not usable here: {info}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, kernel_info {info}")
    if args.what == "ops":
        print("| op | M | K | N | AMX us | oneDNN us | oneDNN / AMX |\n|---|---|---|---|---|---|---|")
        with torch.inference_mode():
            bench_ops(args.rows, OP_SHAPES, args.ops, lambda rows: 200 if rows < 1000 else 20)
    else:
        print("| batch x tokens | AMX ms | oneDNN ms | oneDNN / AMX | repetitions | outputs equal |\n"
              "|---|---|---|---|---|---|")
        bench_model(args.batches, lambda batch: 60 if batch == 1 else 12)


if __name__ == "__main__":
    main()
