#!/usr/bin/env bash
# Usage: bash launch/tpu_vm_setup.sh [--help]
#
# Idempotent set-up of one TPU VM worker (run on every worker, e.g. by
# launch/tpu_vm_run.sh): a virtualenv, jax[tpu] and `pip install -e .` of this
# repository. Safe to re-run: the venv is created only if missing, and the
# installs are skipped while setup.cfg / the requested versions are unchanged
# (a stamp file in the venv). FORCE=1 reinstalls.
#
# Environment:
#   VENV         virtualenv folder            (default: ~/moeclip_venv)
#   PYTHON       interpreter for the venv     (default: python3)
#   JAX_VERSION  pin, e.g. 0.10.2             (default: latest jax[tpu])
#   FORCE        1 = reinstall even if the stamp matches
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$HOME/moeclip_venv}"
PYTHON="${PYTHON:-python3}"
JAX_SPEC="jax[tpu]${JAX_VERSION:+==${JAX_VERSION}}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.moeclip_jax_stamp"
want="$(cat "$REPO_DIR/setup.cfg" "$REPO_DIR"/pyproject.toml 2>/dev/null \
  | sha256sum | cut -d' ' -f1) $JAX_SPEC $REPO_DIR"
if [[ "${FORCE:-0}" != "1" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "moeclip_jax already installed in $VENV (FORCE=1 to reinstall)"
  exit 0
fi

"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install --upgrade "$JAX_SPEC"
"$VENV/bin/python" -m pip install -e "$REPO_DIR"
"$VENV/bin/python" -c "import jax; print('jax', jax.__version__, \
'devices', jax.local_device_count(), 'of', jax.device_count())" || true
echo "$want" > "$stamp"
