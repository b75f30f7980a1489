#!/usr/bin/env bash
# Runs every check and test of the workspace: format, lints, unit/integration tests (with real FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
# Regenerating golden files or the frozen format vector is never a test run: those variables make the tests rewrite
# their expectations (and fail), so refuse them here.
for v in CINFER_UPDATE_GOLDEN CINFER_UPDATE_VECTORS; do
  if [ -n "${!v+x}" ]; then
    echo "test.sh: $v is set: unset it (it rewrites expected outputs; see deploy/tests/render.rs)" >&2
    exit 2
  fi
done
bash scripts/setup.sh
# Python peers (model_signing, tritonclient, ...) live in a cached venv; tests find it through CINFER_PYTHON.
CINFER_PYTHON="$(bash scripts/pyenv.sh)"
export CINFER_PYTHON
# Azurite (npm) for the blob-store tests, installed here before any test starts: tests that each found it missing
# would run `npm install` into one folder at the same time. They find it through CINFER_AZURITE.
CINFER_AZURITE="$(bash scripts/azurite.sh)"
export CINFER_AZURITE
# Dependencies (AES-GCM-SIV, SHA-256, onnx-sized streams) are optimized even in test builds: the end-to-end test
# pushes a 512 MiB model through the crypto, which unoptimized crates would make take minutes. --locked: the
# committed Cargo.lock is what is tested.
OPT=(--locked --config 'profile.dev.package."*".opt-level=3' --config 'profile.dev.package."*".debug=false')
echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy "${OPT[@]}" --workspace --all-targets --features init/netns_tests -- -D warnings
# The workspace build unifies features (encfs gets `fuse` and `aws-lc` from its neighbours), so the sets that ship
# on their own are checked on their own: cinfer-encfs on RustCrypto's AES-GCM-SIV (no C build), and mkimage with
# encfs's codec only (no FUSE on a model owner's machine).
echo "== cargo clippy (shipped feature sets: encfs without aws-lc, mkimage without fuse)" >&2
cargo clippy "${OPT[@]}" -p encfs --no-default-features --features fuse --all-targets -- -D warnings
cargo clippy "${OPT[@]}" -p mkimage --all-targets -- -D warnings
# FUSE over io_uring (Linux 6.14+): the module parameter lets the kernel offer it; the mounts' default transport
# (`auto`) then takes it. Every FUSE test runs twice: over io_uring in the whole-workspace pass, then on the classic
# transport (`CINFER_ENCFS_TRANSPORT=classic`, which the daemon and the tests' expectations both read).
URING_PARAM=/sys/module/fuse/parameters/enable_uring
if [ -w "$URING_PARAM" ]; then
  # The machine's setting comes back however the tests end.
  URING_WAS=$(cat "$URING_PARAM")
  trap 'echo "$URING_WAS" > "$URING_PARAM"' EXIT
  echo Y > "$URING_PARAM"
else
  echo "test.sh: $URING_PARAM not writable: the FUSE tests run on the classic transport only" >&2
fi
run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${OPT[@]}" --no-fail-fast "$@"
  else
    cargo test "${OPT[@]}" --no-fail-fast "$@"
  fi
}
echo "== cargo nextest (FUSE transport: $(grep -qx Y "$URING_PARAM" 2>/dev/null && echo io_uring || echo classic))" >&2
run_tests --workspace --features init/netns_tests
if grep -qx Y "$URING_PARAM" 2>/dev/null; then
  echo "== cargo nextest: the FUSE tests again, on the classic transport" >&2
  CINFER_ENCFS_TRANSPORT=classic run_tests -p encfs -p cinfer-tests
fi
echo "== fuzz (encfs: image header, index, whole-image open, LUKS2 header, FUSE requests; attest: SNP report, THIM JSON, policies: 10 s each)" >&2
FUZZ_DIRS="encfs/fuzz attest/fuzz" FUZZ_SECONDS=10 bash scripts/fuzz.sh
