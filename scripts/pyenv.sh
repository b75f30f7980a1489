#!/usr/bin/env bash
# Creates (or updates) the Python virtual environment the tests use for real peers (OpenSSF model_signing,
# tritonclient, ...), cached outside the clone so CI reuses it. Prints the venv's python path on stdout.
# Packages: scripts/requirements-test.txt. Location: $CINFER_VENV (default ~/.cache/cinfer/venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${CINFER_VENV:-$HOME/.cache/cinfer/venv}"
req="$here/requirements-test.txt"
stamp="$venv/.cinfer-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2 || { echo "pyenv: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "pyenv: installing $(grep -cv '^#' "$req") packages into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
