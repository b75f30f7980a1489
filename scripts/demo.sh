#!/usr/bin/env bash
# The main job on embedded defaults, end to end on this machine: a real ONNX classifier (and a 512 MiB variant)
# laid out as a Triton model repository -> signed (OpenSSF model signing) and encrypted into an image ->
# attestation service + key broker (mock SEV-SNP attester) -> key imported with a release policy for the
# expected policy digest -> attested key release -> FUSE mount (root pinned, signature checked) -> a real Triton
# server reading the model from the mount -> attested TLS server proxy -> client proxy -> an unmodified Triton
# client (tritonclient) via http_proxy prints the answer. Prints how long each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CINFER_PYTHON="$(bash scripts/pyenv.sh)"
export CINFER_PYTHON
echo "== building the tools (release)" >&2
cargo build --release -q -p encfs -p mkimage -p attest -p proxy -p deploy -p cinfer-tests
export CINFER_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
exec "$CINFER_BIN_DIR/cinfer-demo" --large-mb "${CINFER_DEMO_LARGE_MB:-512}" "$@"
