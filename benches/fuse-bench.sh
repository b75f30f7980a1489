# Shared setup of the FUSE read benchmarks (sourced by encfs-read.sh and encfs-scaling.sh; not run by itself).
# Needs: REPO (the repository root) and a `die` function. Defines CINFER_ENCFS, CINFER_MKIMAGE and CINFER_NULLFS
# (built in release mode unless all three are given), and turns the `fuse.enable_uring` module parameter on, keeping
# its value in URING_WAS for the caller's cleanup (`uring_restore`).

if [ -z "${CINFER_ENCFS:-}" ] || [ -z "${CINFER_MKIMAGE:-}" ] || [ -z "${CINFER_NULLFS:-}" ]; then
  echo "$(basename "$0"): building release binaries" >&2
  (cd "$REPO" && cargo build --release -q -p encfs -p mkimage && cargo build --release -q -p encfs --example nullfs)
  TD=${CARGO_TARGET_DIR:-$REPO/target}
  CINFER_ENCFS=${CINFER_ENCFS:-$TD/release/cinfer-encfs}
  CINFER_MKIMAGE=${CINFER_MKIMAGE:-$TD/release/cinfer-mkimage}
  CINFER_NULLFS=${CINFER_NULLFS:-$TD/release/examples/nullfs}
fi

URING_PARAM=/sys/module/fuse/parameters/enable_uring
[ -e "$URING_PARAM" ] || die "this kernel has no FUSE over io_uring ($URING_PARAM missing; Linux 6.14+ with CONFIG_FUSE_IO_URING)"
URING_WAS=$(cat "$URING_PARAM")
echo Y > "$URING_PARAM"
# Puts the module parameter back as it was.
uring_restore() { echo "$URING_WAS" > "$URING_PARAM"; }
