#!/usr/bin/env bash
# The services of docker/compose.yaml natively on 127.0.0.1, no Docker needed (docker/README.md, "Native stack"):
#   docker/local-stack.sh up [DIR]      (default DIR: runs/stack) then: source DIR/stack.env
#   docker/local-stack.sh status|down|worker-stop|worker-start [DIR]
# Runs docker/local_stack.py with the project's venv (VENV, default .venv beside this folder: `make install`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-$here/../.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/prefect" ] || [ ! -x "$venv/bin/mlflow" ]; then
  echo "error: no venv with prefect and mlflow at $venv: run \`make install\` first (or set VENV)" >&2
  exit 1
fi
exec "$venv/bin/python" "$here/local_stack.py" "$@"
