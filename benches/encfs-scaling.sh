#!/usr/bin/env bash
# Core scaling of cold reads through cinfer-encfs (not a timed test; issue 23's sweep). Root required.
#
# For each FUSE transport (classic, io_uring), request threads T (THREADS) and parallel readers R (READERS), in one
# run, interleaved over REPS repetitions (medians): R readers (`dd bs=1M`) each read their own 1/R slice of one
# SIZE_MIB file, page cache dropped first; prints the aggregate GB/s, the daemon's CPU-s/GiB, and the ratios
# io_uring / classic and encfs / copy FS. The peer, measured in the same run for each R: the copy filesystem
# (`encfs/examples/nullfs.rs` answering READs with preads of the plaintext on /dev/shm: FUSE without crypto) on
# the classic transport with COPY_THREADS threads. Image and plaintext live on /dev/shm (FUSE + crypto, not disk).
# Over io_uring the daemon runs one queue per CPU and at least two threads a queue, so T below 2 × CPUs changes
# nothing there (the log line "mounted" gives the layout, printed once per T).
#
# Usage: benches/encfs-scaling.sh [SIZE_MIB (2048)] [REPS (3)]
# Env:   THREADS ("2 4 8 16", capped at 64)  READERS ("1 2 4 8 16", capped at 2 × cores)  COPY_THREADS (8)
#        READ_AHEAD_KB (2048)  CARGO_TARGET_DIR  CINFER_ENCFS, CINFER_MKIMAGE, CINFER_NULLFS (prebuilt binaries)
# On a 16-core machine with 64 GiB: SIZE_MIB=8192 REPS=3 takes ~6 min.
set -euo pipefail

SIZE_MIB=${1:-2048}
REPS=${2:-3}
NPROC=$(nproc)
THREADS=${THREADS:-"2 4 8 16"}
READERS=${READERS:-"1 2 4 8 16"}
COPY_THREADS=${COPY_THREADS:-8}
READ_AHEAD_KB=${READ_AHEAD_KB:-2048}
REPO=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "encfs-scaling: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "root required (drop_caches, readahead, mounts)"
command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 missing (apt-get install fuse3)"
readers=() ; for r in $READERS; do [ "$r" -le $((2 * NPROC)) ] && readers+=("$r"); done
threads=() ; for t in $THREADS; do [ "$t" -le 64 ] && threads+=("$t"); done
[ ${#readers[@]} -gt 0 ] && [ ${#threads[@]} -gt 0 ] || die "nothing to run (THREADS='$THREADS' READERS='$READERS')"

# shellcheck source=benches/fuse-bench.sh
. "$REPO/benches/fuse-bench.sh"

W=$(mktemp -d /dev/shm/encfs-scaling.XXXXXX)
cleanup() {
  set +e
  for m in "$W/mnt" "$W/cmnt"; do mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }; done
  rm -rf "$W"
  uring_restore
}
trap cleanup EXIT

mkdir -p "$W/src" "$W/mnt" "$W/cmnt"
echo "encfs-scaling: generating $SIZE_MIB MiB of random data" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/src/model.bin"
BYTES=$((SIZE_MIB << 20))
ROOT=$("$CINFER_MKIMAGE" build "$W/src" -o "$W/model.img" --key-file "$W/key" 2>/dev/null | tail -1 | sed 's/^root: //')

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Cold read of file $1 by $2 parallel readers, each its own slice; the daemon is $3. Prints "GB/s CPU-s/GiB".
cold() {
  local f=$1 r=$2 pid=$3 per c0 c1 t0 t1 i
  per=$((SIZE_MIB / r))
  drop
  c0=$(cpu_s "$pid"); t0=$(date +%s%N)
  for i in $(seq 0 $((r - 1))); do
    dd if="$f" of=/dev/null bs=1M skip=$((i * per)) count="$per" status=none &
  done
  wait
  t1=$(date +%s%N); c1=$(cpu_s "$pid")
  awk -v b=$((per * r << 20)) -v ns=$((t1 - t0)) -v a="$c0" -v z="$c1" -v mib=$((per * r)) \
    'BEGIN { printf "%.3f %.2f", b / ns, (z - a) * 1024 / mib }'
}

# The copy FS, once for the run (classic transport: the peer).
NULLFS_TRANSPORT=classic "$CINFER_NULLFS" "$W/cmnt" "$BYTES" "$COPY_THREADS" "$W/src/model.bin" 2> "$W/cmnt.log" &
for _ in $(seq 50); do mountpoint -q "$W/cmnt" && break; sleep 0.1; done
mountpoint -q "$W/cmnt" || die "copy FS did not mount: $(cat "$W/cmnt.log")"
echo "$READ_AHEAD_KB" > "/sys/class/bdi/$(mountpoint -d "$W/cmnt")/read_ahead_kb"
cpid=$(pgrep -f -- "$CINFER_NULLFS $W/cmnt " | head -1)

declare -A gbs cpu layout
for rep in $(seq 1 "$REPS"); do
  for r in "${readers[@]}"; do
    read -r g c <<< "$(cold "$W/cmnt/zero.bin" "$r" "$cpid")"
    gbs[copy,$r]+="$g " ; cpu[copy,$r]+="$c "
  done
  for t in "${threads[@]}"; do
    for x in classic uring; do
      mountpoint -q "$W/mnt" && "$CINFER_ENCFS" unmount "$W/mnt"
      while pgrep -f -- "$W/mnt .*--daemon-child" >/dev/null; do sleep 0.1; done
      "$CINFER_ENCFS" mount "$W/model.img" "$W/mnt" --key-file "$W/key" --expect-root "$ROOT" --threads "$t" \
        --transport "$x" --read-ahead-kb "$READ_AHEAD_KB" --log-file "$W/encfs.log"
      layout[$x,$t]=$(grep "mounted mountpoint" "$W/encfs.log" | tail -1 | grep -o 'transport=.*' || true)
      pid=$(pgrep -f -- "$W/mnt .*--daemon-child" | head -1)
      for r in "${readers[@]}"; do
        read -r g c <<< "$(cold "$W/mnt/model.bin" "$r" "$pid")"
        gbs[$x,$t,$r]+="$g " ; cpu[$x,$t,$r]+="$c "
      done
    done
  done
  echo "encfs-scaling: rep $rep done" >&2
done
if ! cmp -s "$W/mnt/model.bin" "$W/src/model.bin"; then die "encfs content differs from the source"; fi

echo
echo "cinfer-encfs core scaling: $SIZE_MIB MiB, $REPS reps (medians), kernel $(uname -r), $NPROC cpus," \
  "read_ahead_kb=$READ_AHEAD_KB"
echo "  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for t in "${threads[@]}"; do
  echo "  --threads $t: classic ${layout[classic,$t]:-?}; io_uring ${layout[uring,$t]:-?}"
done
printf '  %-9s %-8s %10s %10s %10s %8s %10s %10s\n' readers threads "classic" "io_uring" "copy FS" \
  "uring/" "uring/" "CPU-s/GiB"
printf '  %-9s %-8s %10s %10s %10s %8s %10s %10s\n' "" "" "GB/s" "GB/s" "GB/s" classic "copy FS" "cl./uring"
for r in "${readers[@]}"; do
  # shellcheck disable=SC2086
  cf=$(median ${gbs[copy,$r]})
  for t in "${threads[@]}"; do
    # shellcheck disable=SC2086
    gc=$(median ${gbs[classic,$t,$r]}); gu=$(median ${gbs[uring,$t,$r]})
    # shellcheck disable=SC2086
    cc=$(median ${cpu[classic,$t,$r]}); cu=$(median ${cpu[uring,$t,$r]})
    printf '  %-9s %-8s %10s %10s %10s %7sx %9sx %5s/%-5s\n' "$r" "$t" "$gc" "$gu" "$cf" "$(ratio "$gu" "$gc")" \
      "$(ratio "$gu" "$cf")" "$cc" "$cu"
  done
done
