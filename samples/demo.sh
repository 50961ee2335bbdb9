#!/usr/bin/env bash
# The demo of what exists so far: sample data from a real photograph → train → evaluate →
# export one fused ONNX graph → evaluate it through ONNX Runtime.
# Runs offline on a CPU in about five minutes. Usage: bash samples/demo.sh [OUT_DIR] [CATEGORY]
set -euo pipefail
out="${1:-demo}"
category="${2:-brick}"
mkdir -p "$out"
if [ ! -d "$out/$category" ]; then
  stpm data sample "$out/$category" --category "$category"
fi
stpm-train "$out/$category" -o "$out/$category.pt"
stpm-eval "$out/$category.pt" "$out/$category"
stpm info "$out/$category.pt"
stpm-export "$out/$category.pt" -o "$out/$category-onnx" --dynamic-batch
stpm-eval "$out/$category-onnx/model.onnx" "$out/$category"
