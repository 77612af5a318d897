#!/usr/bin/env bash
# Short GPU check for a lent device machine (see README "GPU"): installs the pinned project into a
# fresh venv there, checks CUDA, then GPU figures for the objectives (bf16, fused AdamW, SDPA).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv /tmp/gpuvenv
/tmp/gpuvenv/bin/pip install -q -c constraints.txt -e ".[test]"
/tmp/gpuvenv/bin/python -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"
/tmp/gpuvenv/bin/python -m pytest -q tests/test_views.py -k cuda -p no:cacheprovider
PYTHONUNBUFFERED=1 /tmp/gpuvenv/bin/python benchmarks/gpu_objectives.py --batch 64 --steps 20 | tee "${OUT:-/tmp}/gpu_objectives.log"
