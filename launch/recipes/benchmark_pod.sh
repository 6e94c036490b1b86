#!/usr/bin/env bash
# A benchmark suite over every host of a TPU VM slice (any size): one
# process per host, `jax.distributed` initialised, each process taking
# shard (process index)/(process count) of the suite's unit groups and
# predicting them on its own chips. Each host writes its own store
# (`{shard}` in --out); `benchmark report` then merges them.
# Command:
#   bash launch/recipes/benchmark_pod.sh NAME ZONE --suite moeclip_zsad13 \
#     --out /tmp/bench/shard_{shard} \
#     --suite.detector.*=gs://BUCKET/runs/visa/detector ...
#   # then, from one machine, after copying each host's /tmp/bench/shard_I:
#   moeclip-jax benchmark report --out shard_0 --out shard_1 ... --to all
# A shared filesystem (Filestore / NFS) may hold one --out for all hosts
# instead: the store is one JSON file per unit, written atomically.
# Throughput: not measured (no TPU was available to this project).
set -euo pipefail
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0
fi
exec bash "$(dirname "$0")/../tpu_vm_run.sh" "$1" "$2" --benchmark -- \
  "${@:3}"
