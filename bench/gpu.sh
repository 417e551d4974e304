#!/usr/bin/env bash
# The prepared GPU run (bench/gpu_suite.py: WSD / base-only / speculation at 8B, ZeRO-2 steps, the server under load,
# #44's cost model), for a lent GPU that has torch but not our pins and no network.
#
#   bash bench/gpu.sh --prepare      # here, with network: the wheels into build/gpu-wheels (git-ignored, ~32 MiB)
#   bash bench/gpu.sh [ARGS]         # on the GPU: installs the carried wheels into /tmp/pilot-site, runs the suite
#   bash bench/gpu.sh --dry-run      # here, on CPU, with .venv: the same code paths with tiny configs (no wheels)
#
# ARGS go to bench/gpu_suite.py (--parts, --out, --agreement, ...). docs/benchmarks.md has the `run` command.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=build/gpu-wheels

# What the device's image lacks or has too old (KINDS.md's package list, 2026-11: torch 2.11, transformers 5.17,
# huggingface_hub 1.33; no trl, datasets, deepspeed, fastapi, uvicorn, pydantic), at the versions of this checkout's
# .venv, so the GPU runs the library versions the CPU figures were taken with (torch aside). Pure-Python wheels
# except pydantic_core, regex and hf_xet (cp312 / abi3 manylinux x86_64 builds).
PACKAGES=(transformers huggingface_hub httpx2 httpcore2 truststore idna hf_xet click tokenizers safetensors
          accelerate peft trl datasets dill multiprocess fsspec deepspeed hjson
          fastapi starlette annotated_doc opentelemetry_api uvicorn h11 anyio httpx httpcore
          pydantic pydantic_core annotated_types typing_inspection typing_extensions regex prometheus_client)

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PYTHON:-.venv/bin/python}
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  specs=()
  for p in "${PACKAGES[@]}"; do
    specs+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
  done
  ds=$(printf '%s\n' "${specs[@]}" | grep '^deepspeed==')
  rest=($(printf '%s\n' "${specs[@]}" | grep -v '^deepspeed=='))
  # pip matches the manylinux tag exactly: name the ones these wheels use
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${rest[@]}"
  # DeepSpeed is published as a source archive: build its pure-Python wheel (no ops: they compile on first use),
  # fresh (a cached build may record another accelerator)
  DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" "$ds"
  ls -l "$WHEELS"
  du -sh "$WHEELS"
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [[ " $* " == *" --dry-run "* ]]; then
  PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
  export DS_ACCELERATOR=cpu
else
  PY=${PYTHON:-python3}
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pilot-site \
      "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/pilot-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no wheels in $WHEELS (bash bench/gpu.sh --prepare, then carry it): using what is installed" >&2
  fi
fi
# the checkout itself is the package (the device's Python is 3.12; pyproject.toml asks for 3.11, so no install)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" bench/gpu_suite.py "$@"
