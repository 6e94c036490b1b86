#!/usr/bin/env bash
# Usage: bash launch/tpu_vm_run.sh NAME ZONE [--project P] [--sync scp|git|none]
#            [--git-url URL] [--ref REF] [--benchmark] -- ARGS...
#
# Runs `python -m moeclip_jax.train --distributed on ARGS...` on every
# worker of the TPU VM slice NAME (one `gcloud compute tpus tpu-vm ssh
# --worker=all` call); each worker first runs launch/tpu_vm_setup.sh
# (idempotent). With --benchmark it runs `python -m moeclip_jax.benchmark
# run --shard auto --distributed on ARGS...` instead: one process per host,
# each evaluating its own shard of the suite's units on its own chips
# (see launch/recipes/benchmark_pod.sh). Code reaches the workers by
#   --sync scp   (default) `git archive HEAD` of this checkout, copied with
#                `gcloud compute tpus tpu-vm scp --worker=all`;
#   --sync git   `git clone` / `git fetch` of --git-url at --ref on each worker;
#   --sync none  the code is already in ~/moeclip_jax on every worker.
# Pod hosts share no filesystem: give a gs:// --workdir.
#
# Example:
#   bash launch/tpu_vm_run.sh my-v4-8 us-central2-b -- \
#     --config configs/mesh/tensor_parallel.py:moeclip_vitl14_336 \
#     --workdir gs://BUCKET/runs/visa \
#     --config.backbone.checkpoint=gs://BUCKET/ckpt/vitl14_518 \
#     --config.data.root=/data/VisA
#
# Environment: REMOTE_DIR (default ~/moeclip_jax on the workers), VENV.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -lt 3 ]]; then
  usage >&2
  exit 2
fi

NAME="$1"; ZONE="$2"; shift 2
PROJECT=""; SYNC="scp"; GIT_URL=""; REF="HEAD"; ENTRY="train"
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --project) PROJECT="$2"; shift 2 ;;
    --sync) SYNC="$2"; shift 2 ;;
    --git-url) GIT_URL="$2"; shift 2 ;;
    --ref) REF="$2"; shift 2 ;;
    --benchmark) ENTRY="benchmark"; shift ;;
    *) echo "unknown option $1 (train arguments go after --)" >&2; exit 2 ;;
  esac
done
[[ "${1:-}" == "--" ]] && shift

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-moeclip_jax}"
VENV="${VENV:-\$HOME/moeclip_venv}"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project "$PROJECT")

case "$SYNC" in
  scp)
    tarball="$(mktemp -d)/moeclip_jax.tar.gz"
    git -C "$REPO_DIR" archive --format=tar.gz -o "$tarball" HEAD
    "${GCLOUD[@]}" scp "$tarball" "$NAME:moeclip_jax.tar.gz" --worker=all \
      "${WHERE[@]}"
    fetch="mkdir -p $REMOTE_DIR && tar -xzf moeclip_jax.tar.gz -C $REMOTE_DIR"
    ;;
  git)
    [[ -n "$GIT_URL" ]] || { echo "--sync git needs --git-url" >&2; exit 2; }
    fetch="( [ -d $REMOTE_DIR/.git ] || git clone $(printf %q "$GIT_URL") \
$REMOTE_DIR ) && git -C $REMOTE_DIR fetch --all && \
git -C $REMOTE_DIR checkout $(printf %q "$REF")"
    ;;
  none) fetch="true" ;;
  *) echo "--sync must be scp, git or none" >&2; exit 2 ;;
esac

args=""
for a in "$@"; do args+=" $(printf %q "$a")"; done
if [[ "$ENTRY" == "benchmark" ]]; then
  entry="-m moeclip_jax.benchmark run --shard auto --distributed on"
else
  entry="-m moeclip_jax.train --distributed on"
fi
remote="set -e; $fetch; cd $REMOTE_DIR; VENV=$VENV bash launch/tpu_vm_setup.sh; \
$VENV/bin/python $entry$args"
exec "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$remote"
