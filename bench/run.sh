#!/usr/bin/env bash
# Benchmarks resnetc against ONNX Runtime (and OpenVINO) on this machine; see bench/README.md.
#
#   bench/run.sh [compare.py options]     e.g. bench/run.sh --models resnet18 --threads 1
#
# Environment:
#   RESNETC_BENCH_PYTHON=/path/to/python  use this interpreter instead of bench/.venv
#   RESNETC_BENCH_SKIP_BUILD=1            use the existing target/release/resnetc as is
#   RESNETC_BENCH_TORCH_INDEX=URL         where the venv gets torch/torchvision
#                                         (default: PyTorch's CPU-only wheel index; empty: PyPI)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# resnetc, release build. Cargo rebuilds only what changed, so the numbers are for the
# current sources; RESNETC_BENCH_SKIP_BUILD=1 keeps an existing binary.
bin="$repo/target/release/resnetc"
if [[ "${RESNETC_BENCH_SKIP_BUILD:-0}" == 1 && -x "$bin" ]]; then
    echo "using existing $bin" >&2
else
    # The runtime's archive too: `resnetc build --emit exe` links the AOT executables
    # against it, and `--bin resnetc` alone leaves it as the last full build made it.
    cargo build --release -p resnetc-compiler --bin resnetc -p resnetc-runtime >&2
fi

# Python with torch, torchvision, onnx, onnxruntime, openvino, safetensors, numpy.
if [[ -n "${RESNETC_BENCH_PYTHON:-}" ]]; then
    python="$RESNETC_BENCH_PYTHON"
else
    venv="$repo/bench/.venv"
    python="$venv/bin/python"
    stamp="$venv/.installed"
    if [[ ! -f "$stamp" ]]; then
        echo "setting up $venv (torch's wheel is large: this takes a while)" >&2
        [[ -x "$python" ]] || python3 -m venv "$venv"
        "$python" -m pip install --upgrade pip >&2
        torch_index="${RESNETC_BENCH_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
        if [[ -n "$torch_index" ]]; then
            "$python" -m pip install --index-url "$torch_index" torch torchvision >&2
        else
            "$python" -m pip install torch torchvision >&2
        fi
        "$python" -m pip install onnx onnxruntime safetensors numpy >&2
        # OpenVINO is optional: compare.py skips it with a note when it does not import.
        "$python" -m pip install openvino >&2 || echo "warning: openvino did not install; continuing without it" >&2
        touch "$stamp"
    fi
fi

"$python" -c 'import torch, torchvision, onnx, onnxruntime, safetensors, numpy' || {
    echo "error: $python lacks one of torch, torchvision, onnx, onnxruntime, safetensors, numpy" >&2
    exit 1
}

export RESNETC_BIN="$bin"
# The host-phase probe (`bench/core_rtt.c`), where a C compiler is at hand.
probe=()
mkdir -p "$repo/bench/out"
if command -v cc > /dev/null && cc -O2 -pthread -o "$repo/bench/out/core_rtt" "$repo/bench/core_rtt.c" >&2; then
    probe=(--rtt-probe "$repo/bench/out/core_rtt")
fi

exec "$python" "$repo/bench/compare.py" "${probe[@]}" "$@"
