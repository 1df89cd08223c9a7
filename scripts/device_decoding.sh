#!/bin/bash
# The decoding benchmark (AR / SD / PEARL and its ablations, HF assistant) on a lent GPU, from the
# chunks that scripts/device_stage.py packed and earlier device calls copied to /tmp/stage.
# The image has torch and transformers but no Prefect/MLflow/FastAPI: the benchmark runs with
# --no-mlflow and without the HTTP load test, and reads SmolLM2's GGUF through a package-shaped
# folder on PYTHONPATH (components/lm/smollm2.py only locates the package, never imports it).
#   STAGE=/tmp/stage MODE=--full bash scripts/device_decoding.sh   # JSON, plot and log under $OUT
set -eo pipefail
STAGE="${STAGE:-/tmp/stage}"
MODE="${MODE:---full}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
cat "$STAGE"/stage.tar.* | tar -x -C "$STAGE"
python3 -m pip install -q --no-index --no-deps --target "$STAGE/site" "$STAGE"/wheels/*.whl
export PYTHONPATH="$PWD:$STAGE/site${PYTHONPATH:+:$PYTHONPATH}" SMOLLM2_CACHE="$STAGE/smollm2" PYTHONUNBUFFERED=1
{ nvidia-smi -L || true; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  2>&1 | tee "$OUT/device.txt"
python3 -m benchmarks.decoding $MODE --device "$DEVICE" --draft gpt_folder --draft-path "$STAGE/draft" \
  --skip-load-test --no-mlflow ${EXTRA_ARGS:-} 2>&1 | tee "$OUT/decoding_$DEVICE.log"
cp benchmarks/results/decoding.json "$OUT/decoding_$DEVICE.json"
cp benchmarks/results/decoding.png "$OUT/decoding_$DEVICE.png"
