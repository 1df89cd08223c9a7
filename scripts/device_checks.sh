#!/bin/bash
# One short, prepared run for a lent GPU machine (a bare image: python3 with torch, transformers,
# numpy, safetensors, matplotlib, pytest; no Prefect/Hydra/MLflow/DGL, nothing downloadable).
#   bash scripts/device_checks.sh          # ~3 minutes; logs and JSON under $OUT (or ./device_out)
# What it covers: the CUDA checkpoint staging (pinned ring, copy stream ordered after compute) and
# speculative decoding on CUDA streams (tests/cuda), then the checkpointing benchmark's quick mode on
# the GPU. Not covered here: the decoding benchmark needs SmolLM2 and the draft (~130 MB, over the
# 64 MiB a call can carry): scripts/device_stage.py splits them over three calls and its last call
# runs scripts/device_decoding.sh. The GCN loader's CUDA benchmark samples with DGL (not installed there).
set -o pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
status=0
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  2>&1 | tee "$OUT/device.txt"
python3 -m pytest tests/cuda --noconftest -q -rs 2>&1 | tee "$OUT/cuda_tests.log" || status=1
timeout 600 python3 -m benchmarks.checkpointing --quick --no-mlflow --dir /tmp/ckpt_bench 2>&1 \
  | tee "$OUT/checkpointing_cuda.log" || status=1
cp benchmarks/results/checkpointing.json "$OUT/checkpointing_cuda.json" 2>/dev/null
cp benchmarks/results/checkpointing.png "$OUT/checkpointing_cuda.png" 2>/dev/null
exit $status
