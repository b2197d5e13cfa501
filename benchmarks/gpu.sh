#!/usr/bin/env bash
# Run the GPU benchmarks in one go and keep everything they print.
#
#     bash benchmarks/gpu.sh [LOG_DIR]      (default: benchmarks/results/gpu-<UTC date-time>)
#
# Runs bench_ranking.py, bench_reranking.py, bench_index.py and bench_training.py with
# --device cuda, each under its own timeout (together 450 s, inside an 8-minute budget;
# the setup below comes on top, on the first run only). LOG_DIR receives one log per
# benchmark, environment.txt (date, commit, nvidia-smi, torch / CUDA / cuDNN versions) and
# summary.txt (every benchmark's exit status; 124 means it ran out of time). A benchmark that
# fails or times out never stops the others; the script's own exit status is non-zero only
# when the setup fails.
#
# Assumptions about the machine (a fresh one with this repository and an NVIDIA GPU):
# - Setup: `make install` builds .venv (Python 3.11) with the CPU torch wheel the Makefile
#   pins. When that torch sees no GPU, it is replaced by torch==2.13.0 from the default index
#   (https://pypi.org/simple), whose Linux x86-64 wheel is the CUDA build. Both steps need
#   network access to PyPI.
# - PYTHON=/path/to/python skips the setup: that interpreter must already hold a CUDA torch
#   and this package's dependencies (src/ is put on PYTHONPATH, so the package itself need
#   not be installed), e.g. on a machine without network access.
set -u
cd "$(dirname "$0")/.."

log_dir=${1:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$log_dir" || exit 2
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

cuda_visible() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
}

set_up_python() {
    if [ -n "${PYTHON:-}" ]; then
        python=$PYTHON
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
        return
    fi
    python=.venv/bin/python
    make install || return 1
    if ! cuda_visible "$python"; then
        echo "== .venv's torch sees no GPU: installing the CUDA build of torch==2.13.0"
        "$python" -m pip uninstall -q -y torch || return 1
        "$python" -m pip install -q --index-url https://pypi.org/simple torch==2.13.0 || return 1
    fi
}

record_environment() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
            "($(git status --porcelain 2>/dev/null | wc -l) changed files)"
        echo "cpu cores: $(nproc)"
        "$python" -c 'import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    print("device", i, torch.cuda.get_device_name(i))'
        echo
        nvidia-smi || echo "nvidia-smi failed"
    } >"$log_dir/environment.txt" 2>&1
    cat "$log_dir/environment.txt"
}

statuses=()

# run_benchmark NAME TIMEOUT_S ARGS...: benchmarks/NAME.py ARGS under a timeout, its output
# to the terminal and to LOG_DIR/NAME.log; the exit status goes to the summary.
run_benchmark() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (timeout ${limit}s): $*"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$python" "benchmarks/$name.py" "$@" 2>&1 |
        tee "$log_dir/$name.log"
    local status=${PIPESTATUS[0]}
    statuses+=("$name: exit $status after $((SECONDS - started)) s")
}

if ! set_up_python; then
    echo "setup failed: no Python with a CUDA torch (see the assumptions in $0)" >&2
    exit 2
fi
if ! cuda_visible "$python"; then
    echo "$python: torch sees no CUDA device; nothing to benchmark" >&2
    exit 2
fi
record_environment

run_benchmark bench_ranking 120 --device cuda
# The dense numpy baseline on a quarter of the data keeps this inside its time.
run_benchmark bench_reranking 120 --device cuda --skip-float32 --baseline-scale 0.25
run_benchmark bench_index 60 --device cuda
run_benchmark bench_training 150 --device cuda

printf '%s\n' "${statuses[@]}" | tee "$log_dir/summary.txt"
echo "logs in $log_dir"
