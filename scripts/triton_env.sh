#!/usr/bin/env bash
# Create the virtualenv that runs a real Triton Inference Server for the tests (tests/test_triton.py)
# and for scripts/triton_serve.py: nvidia-pytriton (which bundles tritonserver 2.51 and its Python
# backend) + onnxruntime + numpy.
#
# It must come from Debian's /usr/bin/python3.11: the Python-backend stub that PyTriton ships links
# the system libpython3.11, so a venv made from another 3.11 build (pyenv's python3) fails at model
# load. Idempotent: an existing, working env is left as it is.
#
#   scripts/triton_env.sh [ENV_DIR]      (default: .venv-triton in the repository root)
#   STPM_TRITON_PYTHON=/path/python3.11  to use another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${1:-.venv-triton}"
PY="${STPM_TRITON_PYTHON:-/usr/bin/python3.11}"
PKGS=("nvidia-pytriton>=0.5" "onnxruntime>=1.16" "numpy>=1.23")

if [ ! -x "$PY" ]; then
  echo "triton_env: $PY not found (PyTriton's Python backend needs the system libpython3.11; apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi
if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import pytriton, onnxruntime, numpy" 2>/dev/null; then
  echo "triton_env: $ENV_DIR is ready"
  exit 0
fi
"$PY" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "${PKGS[@]}"
"$ENV_DIR/bin/python" -c "import pytriton, onnxruntime, numpy; print('triton_env: ready', '$ENV_DIR')"
