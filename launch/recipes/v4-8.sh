#!/usr/bin/env bash
# TPU v4-8 (one host, 4 chips): MoECLIP ViT-L/14@518, tensor parallel
# (data 1 x tensor 4), the paper's batch of 2.
# Command:
#   bash launch/recipes/v4-8.sh NAME ZONE --workdir gs://BUCKET/runs/visa \
#     --config.backbone.checkpoint=gs://BUCKET/ckpt/vitl14_518 \
#     --config.data.root=/data/VisA
# Throughput: not measured (no TPU was available to this project).
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0
fi
exec bash "$(dirname "$0")/../tpu_vm_run.sh" "$1" "$2" -- \
  --config "configs/mesh/tensor_parallel.py:moeclip_vitl14_336" "${@:3}"
