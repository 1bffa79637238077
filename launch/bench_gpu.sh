#!/usr/bin/env bash
# `vlpdist bench gpu` as one script on a GPU machine without a package index (the machine
# has torch, transformers, safetensors, tokenizers, fsspec; DeepSpeed and what it needs
# travel as wheels in .whl/).
#
#   launch/bench_gpu.sh --fetch-wheels      here, where pip reaches an index: fills .whl/
#                                           (PYTHON_VERSION: the machine's, default 3.12)
#   launch/bench_gpu.sh [bench gpu options] there: installs .whl/ into /tmp/site and runs
#                                           the bench; JSON lines on stdout and in
#                                           ${OUT:-.}/bench_gpu.json
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=$REPO/.whl

if [[ ${1:-} == --fetch-wheels ]]; then
    PY=${PYTHON:-$REPO/.venv/bin/python}
    version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
    mkdir -p "$WHEELS"
    # DeepSpeed is published as a source distribution: built here as a pure-Python wheel
    # (its CUDA ops compile on first use there; FusedAdam falls back to torch's fused AdamW)
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" \
        "deepspeed==$(version deepspeed)"
    platforms=()
    for n in 2_28 2_27 2_17 2014 1; do
        case $n in 2014 | 1) platforms+=(--platform "manylinux${n}_x86_64") ;;
        *) platforms+=(--platform "manylinux_${n}_x86_64") ;; esac
    done
    wanted=()
    for p in hjson pydantic pydantic-core annotated-types typing-inspection webdataset braceexpand \
        tensorboardX; do
        wanted+=("$p==$(version "$p")")
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version "${PYTHON_VERSION:-3.12}" "${platforms[@]}" -d "$WHEELS" "${wanted[@]}"
    ls "$WHEELS"
    exit 0
fi

PYTHON=${PYTHON:-python3}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
"$PYTHON" -m vlpdist bench gpu --json "$@" | tee "${OUT:-.}/bench_gpu.json"
