#!/usr/bin/env bash
# The one-call GPU check (issue 17 §1): the CUDA tests, then the benchmark table, on a machine with CUDA.
#
#   scripts/gpu-check.sh [OUT_DIR]              # OUT_DIR default: $OUT if set, else outputs/gpu-check (git-ignored)
#   scripts/gpu-check.sh --fetch-wheels [DIR]   # on a machine with PyPI: the wheels a bare GPU box lacks, into DIR (.whl)
#
# Any CUDA machine with gsdefense's dependencies installed: just `scripts/gpu-check.sh out/`.
# This workplace's device machine (python3 3.12 with torch, numpy, scipy, pandas, sklearn, … but no hydra-core,
# omegaconf, antlr4, opacus or submitit; no network), from the repo root:
#   1. here, once:    scripts/gpu-check.sh --fetch-wheels      (6 pure-Python wheels, ~0.8 MB, into .whl/, git-ignored)
#   2. one run call:  run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=600)
# On the machine the script installs .whl/*.whl into /tmp/site when those packages are missing and puts
# /tmp/site and the repo root on PYTHONPATH (no `pip install -e .` needed: launch.py, the tests and the
# benchmarks import gsdefense and hydra_plugins from the repo root). It then prints the environment, runs
# `pytest -m cuda tests/test_cuda.py` (capped at 190 s), then `benchmarks/gpu_check.py --device cuda` (its
# own budget 170 s, capped at 200 s), then `benchmarks/frogs_trials.py` (5 targets, capped at 50 s), then, on
# the machine's otherwise idle CPU, `benchmarks/fmnist_floor.py` (issue 25's FashionMNIST epochs against their
# floor, one thread; random data of FashionMNIST's shape where the IDX files are absent; capped at 90 s), ~5 min
# in all, under 9 min at worst. It writes into OUT_DIR (8 files, the device tool's limit): env.txt,
# cuda-tests.log, cuda-tests.xml, benchmark.log, gpu_check.json, gpu_check.md (the table, also printed),
# frogs-trials.log and fmnist-floor.log.
# Exit status: 0 when every CUDA test passes, the table is complete and the trials benchmark ran; 1 when any
# fails; 2 when there is no CUDA device.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    dir=${2:-.whl}
    mkdir -p "$dir"
    # Pure-Python wheels (py3-none-any) at the versions CI uses; --python-version etc. as the device README says.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" hydra-core==1.3.8 omegaconf==2.3.1 opacus==1.6.0 submitit==1.5.4 hydra-submitit-launcher==1.2.0 || exit 1
    # antlr4-python3-runtime 4.9.3 (omegaconf's pin) is an sdist on PyPI: build its pure-Python wheel here.
    python3 -m pip wheel --no-deps -w "$dir" antlr4-python3-runtime==4.9.3 || exit 1
    if [ "$dir" = .whl ] && ! git check-ignore -q .whl/x.whl; then mkdir -p .git/info && echo /.whl/ >>.git/info/exclude; fi
    ls -l "$dir"
    exit 0
fi

out=${1:-${OUT:-outputs/gpu-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! python3 -c "import hydra, omegaconf, opacus, submitit" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu-check: hydra-core/omegaconf/opacus/submitit are missing and there is no .whl/; run" \
             "'scripts/gpu-check.sh --fetch-wheels' where PyPI is reachable and carry .whl" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi

{
    echo "date: $(date -u +%FT%TZ)  host: ${HOSTNAME:-?}  git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no .git here')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
    python3 -c "import sys, torch, opacus, hydra; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| opacus', opacus.__version__,
'| hydra', hydra.__version__, '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"

set -o pipefail
echo "== CUDA tests"
timeout 190 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py --durations=10 \
    --junitxml="$out/cuda-tests.xml" 2>&1 | tee "$out/cuda-tests.log"
tests=$?
echo "== benchmark table"
timeout 200 python3 benchmarks/gpu_check.py --device cuda --budget-s 170 --out "$out" 2>&1 | tee "$out/benchmark.log"
bench=$?
echo "== Poison Frogs trials: batched vs one after another"
timeout 50 python3 benchmarks/frogs_trials.py --device cuda --mode oneshot --dp dpsgd --arms before batched \
    --targets 5 2>&1 | tee "$out/frogs-trials.log"
frogs=$?
echo "== FashionMNIST epochs against their floor (CPU, one thread)"
timeout 90 python3 benchmarks/fmnist_floor.py --repeats 3 --epochs 1 2>&1 | grep -v Warning | tee "$out/fmnist-floor.log"
echo "gpu-check: CUDA tests exit $tests, benchmark exit $bench, trials exit $frogs; files in $out"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$frogs" -eq 0 ]
