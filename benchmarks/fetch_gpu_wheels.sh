#!/usr/bin/env bash
# Fetches the wheels the lent GPU machine lacks (Python 3.12, x86-64, no network there) into .whl/
# (ignored by git), for benchmarks/gpu_check.py:
#   bash benchmarks/fetch_gpu_wheels.sh
# On the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --out gpu_check.json
# Set LIGER=1 to add Liger's fused linear cross-entropy (pure Python on triton) as a peer.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PY=${PY:-python3}
packages=(megatron-core==0.19.2 math-verify==0.9.0 latex2sympy2_extended==1.11.0
          antlr4-python3-runtime==4.13.2)
if [[ ${LIGER:-0} == 1 ]]; then packages+=(liger-kernel); fi
mkdir -p "$WHEELS"
for package in "${packages[@]}"; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "$package"
done
ls -la "$WHEELS"
du -sh "$WHEELS"
