#!/usr/bin/env bash
# The README's CPU-only install, built and tested: a fresh virtualenv with a CPU build of torch (no CUDA libraries),
# the project's other dependencies, then the smoke tests and one run through launch.py with that virtualenv's python.
#
#   scripts/cpu-install-check.sh              # build, measure, test; the closing line says what ran and the sizes
#   scripts/cpu-install-check.sh --available  # exit 0 when a CPU torch is at hand (what .ci/run asks first)
#
# Where torch comes from, first found:
#   1. $GSDEFENSE_CPU_TORCH_WHEEL, or a CPU wheel for this python in /opt/wheels (torch-*+cpu-cpXY-*.whl): an
#      offline machine. PyTorch's CPU torchvision is not on such a disk and PyPI's fails to import beside a CPU torch
#      (`operator torchvision::nms does not exist`), so the check runs without torchvision: the features that need it
#      (model=resnet18, attack.trigger_path, downloading a dataset) must stop with one line naming the fix, and the
#      tests of those features skip (tests/conftest.py, marker `torchvision`).
#   2. PyTorch's CPU index, the README's route: pip install torch torchvision --index-url $CPU_INDEX.
# PYTHON picks the interpreter the virtualenv is made from (default python3); GSDEFENSE_CI_KEEP_VENV=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
CPU_INDEX=https://download.pytorch.org/whl/cpu
PY=${PYTHON:-python3}
log() { printf 'cpu-install-check: %s\n' "$*" >&2; }
# pip, quietly (this machine's pip config names a local index folder that is absent: one warning per package).
pip_() { "$py" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
mb() { du -sm "$1" | cut -f1; }
# CPU seconds (user + sys) used so far by this shell's finished children and theirs (see .ci/run).
# `times` runs in this shell (a $(...) or pipe would fork a subshell, whose children are not these).
child_cpu() {
    times >"$work/times.txt"
    cpu=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d", t }' \
        "$work/times.txt")
}

wheel=${GSDEFENSE_CPU_TORCH_WHEEL:-}
if [ -z "$wheel" ]; then
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    wheel=$(find /opt/wheels -maxdepth 1 -name "torch-*+cpu-$tag-*.whl" 2>/dev/null | sort -V | tail -n 1)
fi
index_up() { "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" >/dev/null 2>&1; }
if [ "${1:-}" = --available ]; then
    [ -n "$wheel" ] || index_up
    exit
fi

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/gsdefense-cpu-XXXXXX")
venv="$work/venv"
if [ "${GSDEFENSE_CI_KEEP_VENV:-0}" = 1 ]; then log "keeping the virtualenv: $venv"; else trap 'rm -rf "$work"' EXIT; fi
"$PY" -m venv "$venv"
py="$venv/bin/python"
pip_ install --quiet --upgrade pip

# Runtime dependencies first (measured alone), then the dev tools the tests need.
if [ -n "$wheel" ]; then
    log "torch from $wheel (no torchvision: none for this CPU build on disk)"
    pip_ install --quiet "$wheel"
    # Every dependency but torch and torchvision, as pyproject.toml lists them; the project itself without deps.
    mapfile -t deps < <("$py" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"]:
    if re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower() not in ("torch", "torchvision"):
        print(req)
EOF
    )
    pip_ install --quiet "${deps[@]}"
    pip_ install --quiet --no-deps -e .
    runtime=$(mb "$venv")
    mapfile -t dev < <("$py" -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"], sep="\n")')
    pip_ install --quiet "${dev[@]}"
else
    if ! index_up; then
        log "no CPU torch at hand: set GSDEFENSE_CPU_TORCH_WHEEL, or give this machine access to $CPU_INDEX"
        exit 2
    fi
    log "torch and torchvision from $CPU_INDEX"
    pip_ install --quiet torch torchvision --index-url "$CPU_INDEX"
    pip_ install --quiet -e . # keeps the CPU torch: it satisfies the requirement
    runtime=$(mb "$venv")
    pip_ install --quiet -e ".[dev]"
fi
total=$(mb "$venv")

# It is a CPU build, and nothing pulled a CUDA build or NVIDIA's libraries back in.
"$py" -c 'import torch; assert torch.version.cuda is None, torch.__version__' ||
    { log "torch in the virtualenv is a CUDA build"; exit 1; }
if "$py" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then log "NVIDIA packages were installed"; exit 1; fi
torch_v=$("$py" -c 'import torch; print(torch.__version__)')
tv=$("$py" -c 'from gsdefense.optional import torchvision_problem as p; import importlib.metadata as m
print("torchvision " + m.version("torchvision") if p() is None else "torchvision absent or unusable")' 2>/dev/null ||
    echo "torchvision absent")
log "venv: ${runtime} MB with the runtime dependencies, ${total} MB with the dev tools; torch $torch_v, $tv"

# The smoke tests (every package; tests of torchvision-only features skip without it), then the quick start.
unset GSDEFENSE_SLURM_TESTS
rc=0
out="$work/pytest.txt"
child_cpu
cpu_before=$cpu
"$py" -m pytest -m smoke -q -p no:cacheprovider 2>&1 | tee "$out" || rc=$?
child_cpu
summary=$(grep -E '^=* ?[0-9]+ (passed|failed)' "$out" | tail -n 1 | tr -d '=' | xargs)
summary="$summary, $((cpu - cpu_before)) s CPU"
launch=ok
if ! "$py" launch.py optimizer.epochs=2 "hydra.run.dir=$work/run" >"$work/launch.txt" 2>&1 ||
    ! grep -q '"status": "ok"' "$work/run/metrics.json"; then
    tail -n 20 "$work/launch.txt" >&2
    launch=FAILED
    [ "$rc" != 0 ] || rc=1
fi
status=$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")
echo "cpu-install-check: $status in $(($(date +%s) - start)) s; torch $torch_v, $tv;" \
    "venv ${runtime} MB runtime / ${total} MB with dev tools; smoke: $summary; launch.py: $launch"
exit "$rc"
