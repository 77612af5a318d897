#!/usr/bin/env bash
# Short GPU check for a lent device machine (see README "GPU"): installs the pinned project into a
# fresh venv there, checks CUDA, then GPU figures for the objectives (bf16, fused AdamW, SDPA): images/s
# and MFU (FlopCounterMode), to $OUT/gpu_objectives.log and .bench/gpu_objectives.json.
#
#   benchmarks/gpu_check.sh             # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run   # on the CPU, with this environment's python ($PYTHON, default
#                                       # python3): no venv, no install, a tiny ViT, 2 steps per objective
#                                       # (tests/test_bench_harness.py runs it so the script cannot rot)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--dry-run" ]]; then
  py="${PYTHON:-python3}"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
  PYTHONUNBUFFERED=1 "$py" benchmarks/gpu_objectives.py --dry-run ${GPU_CHECK_OUT:+--out "$GPU_CHECK_OUT"}
  exit 0
fi
python3 -m venv /tmp/gpuvenv
/tmp/gpuvenv/bin/pip install -q -c constraints.txt -e ".[test]"
/tmp/gpuvenv/bin/python -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
/tmp/gpuvenv/bin/python -m pytest -q tests/test_views.py -k cuda -p no:cacheprovider
PYTHONUNBUFFERED=1 /tmp/gpuvenv/bin/python benchmarks/gpu_objectives.py --batch 64 --steps 20 | tee "${OUT:-/tmp}/gpu_objectives.log"
