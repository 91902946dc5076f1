#!/usr/bin/env bash
# `robot-sql bench learner` on a lent GPU machine (the project's device tool), in one call.
#
#   scripts/gpu_bench.sh wheels     here, with the package registries: the pure-Python wheels the
#                                   GPU image lacks (its python3 3.12 has torch, numpy, click, tqdm,
#                                   pandas, matplotlib, cloudpickle) into .whl/ (git-ignored)
#   scripts/gpu_bench.sh run [ARGS] there, with .whl carried: installs them into /tmp/site, runs the
#                                   benchmark (single and twin Q) and writes the JSON to $OUT (or
#                                   ./gpu-bench); ARGS go to every bench call (e.g. --tiny)
#
# device call: run(command="bash scripts/gpu_bench.sh run", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2)

case "${1:-}" in
wheels)
    rm -rf .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
        -d .whl "${WHEELS[@]}"
    ls .whl
    ;;
run)
    shift
    out="${OUT:-gpu-bench}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
                torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
    python3 -m robot_sql bench learner --out "$out/learner_cuda.json" "$@"
    python3 -m robot_sql bench learner --twin-q --case sawyer-b128-128x128 --case sawyer-b256-256x256 \
        --out "$out/learner_cuda_twin_q.json" "$@"
    ;;
*)
    echo "usage: $0 wheels | run [bench args]" >&2
    exit 2
    ;;
esac
