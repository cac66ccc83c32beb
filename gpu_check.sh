#!/usr/bin/env bash
# The GPU check: the test suite (the notebook under nbval included) and benchmark.py's quick run on a lent GPU, in one
# call of about 8 minutes. It trains nothing into runs/ and writes its logs under $OUT.
#   here, once:  bash ../shared/tools/device-wheels.sh scipy joblib psutil pytest
#                mkdir -p .mnist && cp ../shared/mnist/*-ubyte.gz .mnist/ && echo /.mnist/ >> .git/info/exclude
#   then the device tool's run: command "bash gpu_check.sh", carry [".whl", ".mnist"], timeout_s 600
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT" data/MNIST/raw
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
for gz in .mnist/*-ubyte.gz; do gunzip -c "$gz" > "data/MNIST/raw/$(basename "$gz" .gz)"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
# operators per step, seconds per seed-step with 1 and 5 seeds together, the study's time from them
timeout 150 python3 benchmark.py --quick --parallel 1 2>&1 | tee "$OUT/benchmark.txt"
timeout 330 python3 -m pytest -q -x 2>&1 | tee "$OUT/pytest.txt"
