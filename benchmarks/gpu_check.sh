#!/usr/bin/env bash
# Every GPU-only check in one command, for a lent H100/H200 machine: at most 8 minutes in all
# (the per-step limits below add up to 480 s, plus 5 s for any step that ignores SIGTERM). A step
# that fails or runs out of time is recorded and the next one runs; the summary says which.
#
#   benchmarks/gpu_check.sh             # writes into $OUT if set (the lent machine's return
#                                       # folder), else gpu_check/: a log and a JSON per step,
#                                       # summary.md, summary.json
#   benchmarks/gpu_check.sh --dry-run   # print the steps and their commands, run nothing
#
# PYTHON selects the interpreter (default: python, else python3); src/ goes first on its path, so
# the checks run this working tree's code whatever is installed. The exit status is 0 only when
# every step passed.
set -u -o pipefail

usage="usage: benchmarks/gpu_check.sh [--dry-run]"
dry_run=0
if (( $# > 1 )); then
    echo "gpu_check: too many arguments ($*); $usage" >&2
    exit 2
elif (( $# == 1 )); then
    if [[ $1 == --dry-run ]]; then
        dry_run=1
    else
        echo "gpu_check: unknown argument '$1'; $usage" >&2
        exit 2
    fi
fi

cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
py="${PYTHON:-$(command -v python || command -v python3)}"
if [[ -z $py ]]; then
    echo "gpu_check: found neither python nor python3; set PYTHON" >&2
    exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

run_step() {  # NAME LIMIT_S COMMAND...: run under `timeout`, log to NAME.log, record the status
    local name=$1 limit=$2
    shift 2
    if (( dry_run )); then
        printf '%-17s %4s s  %s\n' "$name" "$limit" "$*"
        return 0
    fi
    echo "== $name (at most $limit s): $*"
    local start rc ms
    start=$(date +%s%N)
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ms" "$limit" "$*" >>"$out/steps.tsv"
    echo "== $name: exit $rc after $(( ms / 1000 )) s"
}

# The device and the versions first: without a CUDA device nothing else is worth running.
environment=("$py" -m benchmarks.gpu_summary environment "$out")
if (( dry_run )); then
    echo "gpu_check --dry-run: the steps (name, time limit, command) that would write into $out/"
    printf '%-17s %4s s  %s\n' environment 20 "${environment[*]}"
else
    timeout 20 "${environment[@]}"
    rc=$?
    if (( rc != 0 )); then  # status 1: it said why (no CUDA device); else a crash or a timeout
        (( rc == 1 )) || echo "gpu_check: stopped: the environment step ended with $rc" >&2
        exit 1
    fi
    rm -f "$out/steps.tsv"  # the folder exists now; steps of an earlier run are not mixed in
fi

# The tests that need a GPU; --continue-on-collection-errors: a module that cannot be imported
# here (an optional package missing) is reported without stopping the others. Among them the
# float64 check of the Triton depth mix (tests/ops/depth_mix/test_triton_kernel.py): forward and
# every gradient against the reference in float64, in float32, bfloat16 and float16, as compiled
# for this GPU. impl="auto" never takes the kernel; this step is what verifies it on a device.
run_step pytest_gpu 60 "$py" -m pytest -m gpu -q -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$out/pytest_gpu.xml"
# One layer of 360m (15 heads, d 64) at batch 8 × 2048, forward+backward: ms, GB/s, % of HBM peak
run_step depth_mix_kernel 35 "$py" -m benchmarks.depth_mix_kernel --device cuda \
    --dtype bfloat16 --batch 8 --seq 2048 --heads 15 --kv-heads 15 --head-dim 64 \
    --sources 1 2 4 --impls unstacked triton --backward --warmup 5 --repeats 20 \
    --json "$out/depth_mix_kernel.json"
# Compiled bf16 training steps: Depth-Attention / vanilla time ratio and MFU, one preset per step
# so that a slow compile of one does not cost the other
for preset in 360m 710m; do
    run_step "train_step_$preset" 140 "$py" -m benchmarks.train_step --presets "$preset" \
        --seq 2048 --batch 8 --dtype bfloat16 --compile --optimizer --repeats 5 \
        --json "$out/train_step_$preset.json"
done
run_step decode 30 "$py" -m benchmarks.decode --preset 360m --batch 1 32 --context 1024 \
    --new 32 --rounds 3 --dtype bfloat16 --json "$out/decode.json"
run_step vs_transformers 45 "$py" -m benchmarks.vs_transformers --preset 360m --dtype bfloat16 \
    --seq 1024 --batch 4 --no-compile --decode-batch 1 16 --context 512 --new 32 --rounds 3 \
    --decode-rounds 2 --json "$out/vs_transformers.json"

summary=("$py" -m benchmarks.gpu_summary summarize "$out")
if (( dry_run )); then
    printf '%-17s %4s s  %s\n' summary 10 "${summary[*]}"
    exit 0
fi
timeout 10 "${summary[@]}"
