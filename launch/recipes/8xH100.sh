#!/usr/bin/env bash
# One node with 8 H100 GPUs: MoECLIP ViT-L/14@518, FSDP over the 8 GPUs,
# 8 images per step (one per GPU; the learning rate is yours to rescale).
# Command:
#   bash launch/recipes/8xH100.sh --workdir runs/visa \
#     --config.backbone.checkpoint=ckpt/vitl14_518 \
#     --config.data.root=/data/VisA
# Throughput: not measured (no H100 was available to this project).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0
fi
exec "${PYTHON:-python}" -m moeclip_jax.train --distributed off \
  --config "configs/mesh/fsdp.py:moeclip_vitl14_336" \
  --config.batch_size=8 "$@"
