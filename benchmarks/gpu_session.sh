#!/usr/bin/env bash
# The one device command of a session that is lent a GPU: what to measure first, within one call of the device tool.
#
#   On the CPU machine, from the repository root:   bash ../shared/gpucheck/device/prepare_carry.sh .
#   On the GPU machine (device tool, carry [".gpu_carry"], timeout 600):   bash benchmarks/gpu_session.sh
#
# 1. The shared GPU kit (.gpu_carry/, made by prepare_carry.sh): it installs the wheels the GPU image lacks into
#    /tmp/site, then runs its `env` (versions, GPU, measured bf16 peak) and `core` (bf16 noise, host syncs in the
#    hooks, concat == paired, layouts) steps.
# 2. symnoise's own throughput benchmark, benchmarks/train_throughput.py, on the ~1B Llama shape in bf16: real
#    tokens/s and MFU of the recipe against the Trainer (and TRL, when the image has it) baselines. It replaces the
#    kit's `perf` step, which patches recipe internals that no longer exist; this one is kept running by
#    `make test` (its --smoke mode).
# 3. The kit's `gen` and `recipe` steps with the time left.
#
# Everything lands in $OUT: kit/ (summary.txt, env.txt, core.log, run.log), throughput.txt, kit-late/ (summary.txt,
# gen.log, recipe.log). The tail of stdout is the throughput tables. Record device, versions and figures in
# benchmarks/README.md.
#
# Knobs: GPU_SESSION_BUDGET (s, default 530), GPU_SESSION_DEVICE / GPU_SESSION_MODEL (cuda / 1b),
# GPU_SESSION_THROUGHPUT_ARGS (replaces the benchmark's arguments), GPU_SESSION_PRINT_ARGS=1 (print them and stop),
# PYTHON, GPU_READY_INSTALL=0 and GPU_READY_* (passed to the kit). A dry run on the CPU machine, about 4 minutes:
#   OUT=/tmp/gpu_out PYTHON=.venv/bin/python GPU_READY_INSTALL=0 GPUCHECK_ALLOW_CPU=1 OMP_NUM_THREADS=1 \
#     GPU_SESSION_BUDGET=900 GPU_SESSION_THROUGHPUT_ARGS="--smoke" bash benchmarks/gpu_session.sh
set -u
T0=$(date +%s)
ROOT="$(pwd)"
KIT="$ROOT/.gpu_carry"
PY="${PYTHON:-python3}"
ALPACA="$KIT/data/alpaca_data_5000_random_subset.json"

# The benchmark's arguments (in ARGS): FlashAttention and padding_free where flash-attn imports, else SDPA and rows;
# TRL's baseline where trl imports. Asked after the kit's install, with the packages the runs will use.
benchmark_args() {
    if [ -n "${GPU_SESSION_THROUGHPUT_ARGS:-}" ]; then
        read -r -a ARGS <<<"$GPU_SESSION_THROUGHPUT_ARGS"
        return
    fi
    local attn=() layout=rows variants
    if "$PY" -c "import flash_attn" >/dev/null 2>&1; then
        attn=(--attn flash_attention_2)
        layout=padding_free
    fi
    variants="recipe neftune $layout,recipe symnoise $layout,recipe none $layout 2x batch"
    variants+=",trainer+neftune group_by_length,trainer+neftune flattening"
    if "$PY" -c "import trl, datasets" >/dev/null 2>&1; then
        variants+=",trl sft+neftune packing 1 row"
    fi
    ARGS=(--device "${GPU_SESSION_DEVICE:-cuda}" --model "${GPU_SESSION_MODEL:-1b}" "${attn[@]}" --per-device-batch 8
        --effective-batch 16 --max-length 512 --steps 8 --repeats 1 --eval-examples 32 --variants "$variants")
    if [ -f "$ALPACA" ]; then ARGS+=(--data "$ALPACA"); fi
}
if [ -n "${GPU_SESSION_PRINT_ARGS:-}" ]; then  # for the test that keeps the variant names true
    benchmark_args
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
if [ ! -d "$ROOT/src/symnoise" ] || [ ! -f "$KIT/run_on_device.sh" ]; then
    echo "run from the repository root, with .gpu_carry/ made by ../shared/gpucheck/device/prepare_carry.sh" >&2
    exit 2
fi
OUT="${OUT:-$ROOT/gpu_out}"
BUDGET="${GPU_SESSION_BUDGET:-530}"
mkdir -p "$OUT/kit" "$OUT/kit-late"
left() { echo $((BUDGET - ($(date +%s) - T0))); }
say() { echo "[$(($(date +%s) - T0))s] $*"; }

# 1. install, env, core (the kit cuts each step to the budget it is given)
say "kit: install, env, core"
OUT="$OUT/kit" GPU_READY_STEPS="env core" GPU_READY_BUDGET=$((BUDGET < 170 ? BUDGET : 170)) PYTHON="$PY" \
    bash "$KIT/run_on_device.sh" >"$OUT/kit/stdout.txt" 2>&1
say "kit: $(grep -c '^PASS' "$OUT/kit/summary.txt") PASS, $(grep -c '^FAIL' "$OUT/kit/summary.txt") FAIL"

# What the kit installed, for the steps below: the carried wheels first, then the checkout.
if [ "${GPU_READY_INSTALL:-1}" != "0" ]; then
    export PYTHONPATH="${GPU_READY_SITE:-/tmp/site}:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    WANDB_DISABLED=true PYTHONUNBUFFERED=1

# 2. the throughput benchmark
benchmark_args

T=$(($(left) - 90))  # the throughput comes first; generation and the recipe checks get what is left
T=$((T > 300 ? 300 : T))
say "throughput: up to ${T}s: ${ARGS[*]}"
timeout -k 10 "$T" "$PY" benchmarks/train_throughput.py "${ARGS[@]}" >"$OUT/throughput.txt" 2>&1
say "throughput: rc=$? (124: cut at ${T}s; what it printed is kept)"

# 3. gen and recipe with the time left
REST=$(($(left) - 15))
if ((REST > 40)); then
    say "kit: gen, recipe, up to ${REST}s"  # the kit skips a step with under 25 s left
    OUT="$OUT/kit-late" GPU_READY_STEPS="gen recipe" GPU_READY_BUDGET="$REST" GPU_READY_INSTALL=0 PYTHON="$PY" \
        bash "$KIT/run_on_device.sh" >"$OUT/kit-late/stdout.txt" 2>&1
fi
say "done"
echo
echo "================ kit summary (cut at 200 characters) ================"
cut -c1-200 "$OUT/kit/summary.txt" "$OUT/kit-late/summary.txt" 2>/dev/null
echo
echo "================ throughput ($OUT/throughput.txt, its tables) ================"
grep -E '^(machine|model|data):|^  repeat' "$OUT/throughput.txt" | cut -c1-200  # each run, even if cut short
sed -n '/^Throughput/,$p' "$OUT/throughput.txt" | cut -c1-200
