#!/usr/bin/env bash
# Build mmcv (with compiled ops) once into a wheel cache outside the checkout and install it.
# Why: PyPI has only mmcv source releases; compiling takes ~14 min on 2 cores, so every later
# install (also from a fresh clone on the same machine) reuses the cached wheel.
# Usage: .ci/build_mmcv.sh PYTHON   (env: MMCV_VERSION, EM_CUDA=auto|0|1, EM_WHEEL_CACHE, MAX_JOBS)
set -euo pipefail
PY="$(cd "$(dirname "${1:?python executable of the venv}")" && pwd)/$(basename "$1")"
MMCV_VERSION=${MMCV_VERSION:-2.0.1}
CACHE=${EM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/em_lightning/wheels}

torch_tag=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# CUDA ops only when asked (EM_CUDA=1) or when a GPU and nvcc are both present (EM_CUDA=auto).
cuda=${EM_CUDA:-auto}
if [ "$cuda" = auto ]; then
  if command -v nvcc >/dev/null && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    cuda=1
  else
    cuda=0
  fi
fi
if [ "$cuda" = 1 ]; then
  flavor="cu$("$PY" -c 'import torch; print(torch.version.cuda.replace(".", ""))')"
else
  flavor=cpu
fi
key="mmcv-${MMCV_VERSION}_torch-${torch_tag}_${flavor}_${py_tag}"
dest="$CACHE/$key"

if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(0 if mmcv.__version__ == '$MMCV_VERSION' else 1)" 2>/dev/null; then
  echo "mmcv $MMCV_VERSION with ops already installed ($key)"; exit 0
fi
if ! ls "$dest"/mmcv-*.whl >/dev/null 2>&1; then
  echo "Building mmcv $MMCV_VERSION with ops ($flavor) into $dest; this takes ~15 min on 2 cores, once."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work" -q
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # torch >= 2.x headers need C++20; mmcv's setup.py hard-codes older standards.
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' \
         -e "s/'c++14'/'c++20'/g" -e "s/'c++17'/'c++20'/g" "$src/setup.py"
  mkdir -p "$work/out"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/out" . )
  mkdir -p "$dest"
  mv "$work"/out/mmcv-*.whl "$dest"/
fi
"$PY" -m pip install --no-deps --force-reinstall -q "$dest"/mmcv-*.whl
echo "mmcv installed from $dest"
