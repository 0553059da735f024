#!/usr/bin/env bash
# Everything the training-speed work measures on a GPU, as one run that fits a lent GPU's 15 minutes
# (start-up included): about 2 minutes of benchmarks, at most 8.5 minutes of training, 1-2 of evaluation.
#
#   1. benchmarks/train.py on CUDA: shapes-dit (batch 16) and shapes-dit-gpu (batch 128) end to end beside
#      the model-only step, eager and compiled, plus the Wan2.1-1.3B-shape train step: ours eager, ours
#      compiled per block, diffusers' WanTransformer3DModel
#   2. kinema train shapes-dit-gpu, stopped by SIGTERM (a clean checkpoint) if it is still running at
#      TRAIN_SECONDS, then exported from its newest checkpoint
#   3. kinema eval shapes, text-to-video on train and held-out prompts, on the result
#
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_session.sh
# It writes train.json, the logs, metrics.jsonl, loss.png and the eval reports into reports/gpu, and when $OUT
# is set (the device tool's folder, which returns at most 8 files) a tarball of them there too.
set -uo pipefail
out=${REPORT_DIR:-reports/gpu}
train_seconds=${TRAIN_SECONDS:-510}
run=${RUN:-runs/shapes-dit-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import kinema" 2>/dev/null || python3 -m pip install -q --no-deps -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

python3 benchmarks/train.py --presets shapes-dit shapes-dit-gpu --cases memory memory+compile model-only model-only+compile stream \
    --steps 20 --out "$out/train.json" 2>&1 | tee "$out/benchmark.log"

started=$(date +%s)
timeout -s TERM -k 60 "$train_seconds" python3 -m kinema train shapes-dit-gpu --out "$run" --set log.progress=false 2>&1 \
    | tee "$out/train.log" | grep -v "^step" | tail -n 40
echo "training: $(( $(date +%s) - started )) s of wall time" | tee -a "$out/train.log"
if [ ! -f "$run/pipeline/pipeline.json" ]; then
    # stopped early: export the newest checkpoint (a resume whose steps end where the checkpoint is)
    last=$(ls "$run/checkpoints" | sed -n 's/^step-0*//p' | sort -n | tail -n 1)
    python3 -m kinema train shapes-dit-gpu --out "$run" --resume --set steps="$last" --set log.progress=false 2>&1 | tail -n 3
fi
cp "$run/metrics.jsonl" "$run/loss.png" "$out/" 2>/dev/null

for split in train heldout; do
    python3 -m kinema eval shapes --model "$run/pipeline" --split "$split" --n 64 --device cuda \
        --out "$out/t2v-$split.json" 2>&1 | tail -n 12
done

if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-session.tar.gz" -C "$out" .
fi
