#!/usr/bin/env bash
# TPU v5e-32 (8 hosts x 4 chips): MoECLIP ViT-L/14@518, data 8 x tensor 4,
# 32 images per step (the batch must divide the 8 data-parallel groups;
# the learning rate is yours to rescale).
# Command:
#   bash launch/recipes/v5e-32.sh NAME ZONE --workdir gs://BUCKET/runs/visa \
#     --config.backbone.checkpoint=gs://BUCKET/ckpt/vitl14_518 \
#     --config.data.root=/data/VisA
# Throughput: not measured (no TPU was available to this project).
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0
fi
exec bash "$(dirname "$0")/../tpu_vm_run.sh" "$1" "$2" -- \
  --config "configs/mesh/tensor_parallel.py:moeclip_vitl14_336" \
  --config.batch_size=32 "${@:3}"
