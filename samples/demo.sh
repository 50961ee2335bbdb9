#!/usr/bin/env bash
# The long tour: sample data from a real photograph → train → evaluate → export the fused
# ONNX graph with FP16 and INT8 variants (INT8 gated on accuracy) → evaluate them side by
# side through ONNX Runtime → stream the test images through stpm-run.
# Runs offline on a CPU in about six minutes. Usage: bash samples/demo.sh [OUT_DIR] [CATEGORY]
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
stpm-export "$out/$category.pt" -o "$out/$category-onnx" --fp16 --int8 --calib "$out/$category" \
  --val "$out/$category" --max-auroc-drop 0.5
stpm-eval "$out/$category-onnx/model.onnx" "$out/$category" --variants
stpm-run "$out/$category-onnx/model.onnx" -s "$out/$category/test/*/*.png" --headless \
  --events "$out/$category-events.jsonl" -o "$out/$category-overlay"
