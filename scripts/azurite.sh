#!/usr/bin/env bash
# Installs Azurite (npm package `azurite`, major 3) into ~/.cache/cinfer/azurite if it is not there yet, and
# prints the path of its `azurite-blob` executable. Idempotent; needs node and npm (Debian: nodejs, npm).
# Tests call this (or read CINFER_AZURITE, the path of an azurite-blob to use instead).
set -euo pipefail
if [[ -n "${CINFER_AZURITE:-}" && -x "${CINFER_AZURITE}" ]]; then
  echo "${CINFER_AZURITE}"
  exit 0
fi
prefix="${CINFER_AZURITE_PREFIX:-${HOME}/.cache/cinfer/azurite}"
bin="${prefix}/node_modules/.bin/azurite-blob"
if [[ ! -x "${bin}" ]]; then
  command -v npm >/dev/null || { echo "azurite.sh: npm is missing (apt-get install nodejs npm)" >&2; exit 1; }
  mkdir -p "${prefix}"
  npm install --prefix "${prefix}" --no-audit --no-fund --loglevel=error azurite@3 >&2
fi
echo "${bin}"
