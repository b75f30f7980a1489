#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly (default 10 s each; FUZZ_SECONDS overrides): the image header/index and
# LUKS2 parsers (encfs/fuzz) and the SNP report, THIM JSON and policy parsers (attest/fuzz). Uses the stable
# toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z sanitizer flags), so no nightly is required.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-10}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install -q cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
for dir in ${FUZZ_DIRS:-encfs/fuzz attest/fuzz}; do
  for t in $(cargo fuzz list --fuzz-dir "$dir"); do
    echo "== fuzz $dir $t (${secs}s)" >&2
    # Each target's fresh corpus lives in the target dir, not in the clone; the committed seeds (`$dir/corpus/$t`,
    # e.g. a real SNP report) are read as a second corpus.
    corpus="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-corpus/$dir/$t"
    mkdir -p "$corpus"
    seeds=()
    if [ -d "$dir/corpus/$t" ]; then seeds=("$dir/corpus/$t"); fi
    cargo fuzz run --fuzz-dir "$dir" "$t" "$corpus" "${seeds[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
  done
done
