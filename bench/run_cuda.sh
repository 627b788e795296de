#!/usr/bin/env bash
# The CUDA checks in one run, for a machine with an NVIDIA GPU and a CUDA build of torch (its python3 need not be
# this project's .venv): builds dtb_ext._C in place with its CUDA kernels for this GPU's architecture, runs the
# CUDA tests (kernels against the reference, the patched model against Hugging Face and the CPU model), then the
# CUDA benchmarks (ops and whole model, interleaved) and writes their report. Logs and JSON go to $OUT (default
# runs/cuda). A wheel of the pinned transformers in .whl/ is installed first where the machine has another one.
#
#     bash bench/run_cuda.sh            # everything
#     DTB_CUDA_BENCH=0 bash bench/run_cuda.sh   # build and tests only
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-runs/cuda}"
mkdir -p "$out"
python="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dtb_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/dtb_site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

arch="$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
started=$SECONDS
TORCH_CUDA_ARCH_LIST="$arch" DTB_CPU_CAPABILITIES="${DTB_CPU_CAPABILITIES:-default}" MAX_JOBS="$(nproc)" \
    "$python" setup.py build_ext --inplace >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $((SECONDS - started)) s (sm_${arch/./})"
"$python" -c "import dtb_ext; info = dtb_ext.kernel_info(); print(info); assert info['cuda_built'], info" || exit 1

status=0
"$python" -m pytest -q -p no:cacheprovider tests/ops/test_ops_cuda.py tests/models/test_encoder_cuda.py \
    --junitxml="$out/tests.xml" >"$out/tests.log" 2>&1 || status=1
tail -60 "$out/tests.log"

if [ "${DTB_CUDA_BENCH:-1}" = "1" ]; then
    "$python" -m pytest -q -p no:cacheprovider bench/test_bench_ops.py bench/test_bench_model_cuda.py -k cuda \
        --benchmark-only --benchmark-json="$out/bench_cuda.json" >"$out/bench.log" 2>&1 || status=1
    tail -30 "$out/bench.log"
    "$python" bench/report.py "$out/bench_cuda.json" "$out/REPORT-cuda.md" --command "bash bench/run_cuda.sh" || status=1
fi
exit $status
