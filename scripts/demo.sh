#!/usr/bin/env bash
# The main job on embedded defaults, end to end on this machine: `cinfer-deploy local --once`. A real ONNX
# classifier (and a 512 MiB variant, CINFER_DEMO_LARGE_MB) laid out as a Triton model repository -> signed
# (OpenSSF model signing) and encrypted into an image -> uploaded to Azurite -> attestation service + key broker
# (mock SEV-SNP attester) -> key imported with a release policy for the expected policy digest -> encfs sidecar:
# attested key release -> FUSE mount of the blob (root pinned, signature checked) -> a real Triton server reading
# the model from the mount -> attested TLS server proxy -> client proxy -> an unmodified Triton client
# (tritonclient) via http_proxy prints the answer. Prints how long each stage took. Extra arguments go to
# `cinfer-deploy local` (e.g. --keep, --image-store http); without --once it keeps serving until Ctrl-C:
#   ./scripts/demo.sh            # once, then exit
#   CINFER_DEMO_SERVE=1 ./scripts/demo.sh   # serve until Ctrl-C
#   ./scripts/demo.sh --gpu [N]  # composite flow: the container has N (default 1) mock NVIDIA GPUs; the key's release
#                                # policy and the client policy require them (CC on, no DevTools, measurements
#                                # matched); prints a composite token's GPU claims and the key refused without GPUs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CINFER_PYTHON="$(bash scripts/pyenv.sh)"
export CINFER_PYTHON
CINFER_AZURITE="$(bash scripts/azurite.sh)"
export CINFER_AZURITE
echo "== building the tools (release)" >&2
cargo build --release -q -p encfs -p mkimage -p attest -p proxy -p deploy
export CINFER_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
once=(--once)
[[ -n "${CINFER_DEMO_SERVE:-}" ]] && once=()
exec "$CINFER_BIN_DIR/cinfer-deploy" local "${once[@]}" --large-mb "${CINFER_DEMO_LARGE_MB:-512}" "$@"
