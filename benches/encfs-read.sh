#!/usr/bin/env bash
# Read benchmark for cinfer-encfs (not a timed test). Root required.
#
# In one run, interleaved over REPS repetitions (medians reported):
#   * cold sequential read of a SIZE_MIB file through cinfer-encfs and through gocryptfs (page cache dropped
#     before each cold read; image and gocryptfs cipher dir on /dev/shm, so we measure FUSE + crypto, not disk);
#   * warm re-read through cinfer-encfs (close + reopen; FOPEN_KEEP_CACHE keeps the page cache);
#   * plain page-cache read of the same plaintext on the root filesystem (the warm reference);
#   * `cinfer-mkimage build` of the SIZE_MIB file;
#   * the FUSE ceiling: a cold read through a null filesystem (`encfs/examples/nullfs.rs`: same FUSE settings and
#     readahead, READs answered from a zero buffer, no I/O, no crypto), so the encfs figure can be read as a
#     fraction of what any FUSE daemon gets on this machine, and the gocryptfs target against what is reachable;
#   * a copy filesystem: the same null filesystem answering READs with `pread`s of the plaintext file on /dev/shm
#     (FUSE plus reading a file from where it lives, no crypto), the most a daemon reaches that must read its
#     image, as encfs and gocryptfs both do. It runs with COPY_THREADS request threads, its best setting here.
# Warm figures are symmetric: the reference file is read once (unmeasured) after `cp` cached it, and the encfs
# file once after the cold read cached it, so both measured reads are the third pass over cached pages. (The
# first re-read of a page pays for moving it to the active LRU list, which made a first encfs re-read look
# slower than a reference that had already been re-read.) The first encfs re-read is shown too.
# CPU-seconds per GiB (the daemon's for reads, mkimage's for the build) are printed next to wall-clock figures:
# they barely move when other jobs share the machine, wall-clock figures do.
# Also prints how the page cache holds the warm encfs and ext4 files (benches/folio-sizes.py): FUSE's page cache
# uses single 4 KiB pages on the kernels seen so far, ext4's large folios, which is most of the warm gap.
# Every FUSE figure (encfs, null FS, copy FS) is taken on both transports, in the same run: classic
# (`/dev/fuse` read/write, request threads each on a cloned descriptor) and io_uring (`--transport uring`: per-CPU ring queues; the
# script turns the `fuse.enable_uring` module parameter on for the run and restores it).
# The reader's CPU (dd's user + system time: copying to user space, and for a FUSE file the page cache's work of
# allocating and inserting its pages) is printed too, and with the daemon's it gives each cold read's CPU ceiling,
# cores / (daemon + reader CPU-s per GiB): a target above an encfs ceiling takes less CPU per GiB to meet.
# Prints each figure and the ratios against the targets: cold >= 2.5x gocryptfs, encfs over io_uring >= 1.0x the
# copy FS on the classic transport, warm >= 0.8x page cache, build >= 1 GB/s.
#
# Usage: benches/encfs-read.sh [SIZE_MIB (1024)] [REPS (3)]
# Env:   READ_AHEAD_KB (2048)  readahead for the encfs and null-FS mounts (the daemon's default --read-ahead-kb)
#        ENCFS_THREADS         FUSE request threads (--threads; default as the daemon for a local image: one per
#                              core, 2 to 16), also used by the null FS
#        COPY_THREADS (8)      request threads of the copy filesystem
#        ENCFS_IO (pread)      how the daemon reads the image (--io pread|mmap)
#        CARGO_TARGET_DIR      where release binaries are built (default: <repo>/target)
#        CINFER_ENCFS, CINFER_MKIMAGE, CINFER_NULLFS   use these binaries instead of building
set -euo pipefail

SIZE_MIB=${1:-1024}
REPS=${2:-3}
READ_AHEAD_KB=${READ_AHEAD_KB:-2048}
NPROC=$(nproc)
ENCFS_THREADS=${ENCFS_THREADS:-$((NPROC < 2 ? 2 : (NPROC > 16 ? 16 : NPROC)))}
ENCFS_IO=${ENCFS_IO:-pread}
COPY_THREADS=${COPY_THREADS:-8}
REPO=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "encfs-read: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "root required (drop_caches, readahead, gocryptfs install)"
[ -w /proc/sys/vm/drop_caches ] || die "/proc/sys/vm/drop_caches is not writable"
[ -d /dev/shm ] || die "/dev/shm missing"

if ! command -v gocryptfs >/dev/null 2>&1; then
  echo "encfs-read: installing gocryptfs (Debian package)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gocryptfs >/dev/null
fi
command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 missing (apt-get install fuse3)"

# shellcheck source=benches/fuse-bench.sh
. "$REPO/benches/fuse-bench.sh"

W=$(mktemp -d /dev/shm/encfs-bench.XXXXXX)
PLAIN_DIR=$(mktemp -d /var/tmp/encfs-bench-plain.XXXXXX)
cleanup() {
  set +e
  for m in "$W/emnt" "$W/umnt" "$W/gplain" "$W/nmnt" "$W/cmnt" "$W/nmnt_u" "$W/cmnt_u"; do
    mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
  done
  rm -rf "$W" "$PLAIN_DIR"
  uring_restore
}
trap cleanup EXIT

mkdir -p "$W/src" "$W/emnt" "$W/umnt" "$W/gcipher" "$W/gplain" "$W/nmnt" "$W/cmnt" "$W/nmnt_u" "$W/cmnt_u"
echo "encfs-read: generating $SIZE_MIB MiB of random data" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/src/model.bin"
cp "$W/src/model.bin" "$PLAIN_DIR/model.bin"
BYTES=$((SIZE_MIB << 20))

# Prints GB/s of reading $1 with dd bs=1M; leaves the reader's CPU seconds (user system) in $W/dd.cpu.
read_gbs() {
  local f=$1 t0 t1 TIMEFORMAT='%U %S'
  t0=$(date +%s%N)
  { time dd if="$f" of=/dev/null bs=1M status=none ; } 2> "$W/dd.cpu"
  t1=$(date +%s%N)
  awk -v b="$BYTES" -v ns="$((t1 - t0))" 'BEGIN { printf "%.3f", b / ns }'
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU seconds per GiB read, from two cpu_s samples.
per_gib() { awk -v a="$1" -v b="$2" -v mib="$SIZE_MIB" 'BEGIN { printf "%.2f", (b - a) * 1024 / mib }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# gocryptfs: default options (no -kernel_cache), cheap scrypt for setup speed (does not affect reads).
echo pw > "$W/gpass"
gocryptfs -q -init -scryptn 10 -passfile "$W/gpass" "$W/gcipher" >/dev/null
gocryptfs -q -nosyslog -passfile "$W/gpass" "$W/gcipher" "$W/gplain"
cp "$W/src/model.bin" "$W/gplain/model.bin"

# The null filesystem (FUSE ceiling) and the copy filesystem (over the plaintext on /dev/shm, the image's
# neighbour), each on both transports, with the same readahead as the encfs mounts.
start_nullfs() { # MOUNTPOINT TRANSPORT THREADS [BACKING]
  local mnt=$1 transport=$2 threads=$3
  shift 3
  NULLFS_TRANSPORT=$transport "$CINFER_NULLFS" "$mnt" "$BYTES" "$threads" "$@" 2> "$mnt.log" &
  for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done
  mountpoint -q "$mnt" || die "nullfs ($transport) did not mount: $(cat "$mnt.log")"
  echo "$READ_AHEAD_KB" > "/sys/class/bdi/$(mountpoint -d "$mnt")/read_ahead_kb"
}
start_nullfs "$W/nmnt" classic "$ENCFS_THREADS"
start_nullfs "$W/nmnt_u" uring "$ENCFS_THREADS"
start_nullfs "$W/cmnt" classic "$COPY_THREADS" "$W/src/model.bin"
start_nullfs "$W/cmnt_u" uring "$COPY_THREADS" "$W/src/model.bin"
grep -q "transport=uring" "$W/nmnt_u.log" || die "the null FS did not get io_uring: $(cat "$W/nmnt_u.log")"
pid_of() { pgrep -f -- "$CINFER_NULLFS $1 " | head -1; }
npid=$(pid_of "$W/nmnt"); npid_u=$(pid_of "$W/nmnt_u"); cpid=$(pid_of "$W/cmnt"); cpid_u=$(pid_of "$W/cmnt_u")

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
null=() ; copy=() ; build_gbs=() ; cold_e=() ; warm_e=() ; warm1_e=() ; cold_g=() ; page=() ; shm=() ; cpu_e=() ; cpu_g=() ; cpu_b=()
null_u=() ; copy_u=() ; cold_u=() ; warm_u=() ; cpu_u=() ; cpu_n=() ; cpu_nu=() ; cpu_c=() ; cpu_cu=()
rd_e=() ; rd_u=() ; rd_n=() ; rd_nu=() ; rd_c=() ; rd_cu=() ; rd_g=()
# Cold read of $1 (page cache dropped first) by the daemon $2; appends GB/s to array $3, the daemon's CPU-s/GiB
# to $4 and the reader's (dd: copying to user space, and the page cache's work for the FUSE file) to $5.
cold() {
  local -n gbs=$3 cpu=$4 rcpu=$5
  local c0 c1
  drop; c0=$(cpu_s "$2"); gbs+=("$(read_gbs "$1")"); c1=$(cpu_s "$2")
  cpu+=("$(per_gib "$c0" "$c1")")
  rcpu+=("$(awk -v mib="$SIZE_MIB" '{ printf "%.2f", ($1 + $2) * 1024 / mib }' "$W/dd.cpu")")
}
gpid=$(pgrep -f "gocryptfs.*$W/gplain" | head -1)
root=""
for rep in $(seq 1 "$REPS"); do
  # Build (also produces the image the encfs reads use).
  mountpoint -q "$W/emnt" && "$CINFER_ENCFS" unmount "$W/emnt"
  mountpoint -q "$W/umnt" && "$CINFER_ENCFS" unmount "$W/umnt"
  t0=$(date +%s%N)
  # `time` (bash keyword) reports the child's user and system CPU seconds.
  TIMEFORMAT='%U %S'
  { time out=$("$CINFER_MKIMAGE" build "$W/src" -o "$W/model.img" --key-file "$W/key" --force 2>/dev/null) ; } 2> "$W/build.cpu"
  t1=$(date +%s%N)
  build_gbs+=("$(awk -v b="$BYTES" -v ns="$((t1 - t0))" 'BEGIN { printf "%.3f", b / ns }')")
  cpu_b+=("$(awk -v mib="$SIZE_MIB" '{ printf "%.2f", ($1 + $2) * 1024 / mib }' "$W/build.cpu")")
  root=$(printf '%s\n' "$out" | tail -1 | sed 's/^root: //')
  for t in classic uring; do
    m=$([ "$t" = classic ] && echo "$W/emnt" || echo "$W/umnt")
    "$CINFER_ENCFS" mount "$W/model.img" "$m" --key-file "$W/key" --expect-root "$root" \
      --read-ahead-kb "$READ_AHEAD_KB" --threads "$ENCFS_THREADS" --io "$ENCFS_IO" --transport "$t" \
      --log-file "$W/encfs-$t.log"
  done
  grep -q "transport=uring" "$W/encfs-uring.log" || die "encfs did not get io_uring: $(cat "$W/encfs-uring.log")"
  epid=$(pgrep -f -- "$W/emnt .*--daemon-child" | head -1)
  upid=$(pgrep -f -- "$W/umnt .*--daemon-child" | head -1)
  cold "$W/emnt/model.bin" "$epid" cold_e cpu_e rd_e
  warm1_e+=("$(read_gbs "$W/emnt/model.bin")")
  warm_e+=("$(read_gbs "$W/emnt/model.bin")")
  cold "$W/umnt/model.bin" "$upid" cold_u cpu_u rd_u
  read_gbs "$W/umnt/model.bin" >/dev/null
  warm_u+=("$(read_gbs "$W/umnt/model.bin")")
  cold "$W/nmnt/zero.bin" "$npid" null cpu_n rd_n
  cold "$W/nmnt_u/zero.bin" "$npid_u" null_u cpu_nu rd_nu
  cold "$W/cmnt/zero.bin" "$cpid" copy cpu_c rd_c
  cold "$W/cmnt_u/zero.bin" "$cpid_u" copy_u cpu_cu rd_cu
  cold "$W/gplain/model.bin" "$gpid" cold_g cpu_g rd_g
  read_gbs "$PLAIN_DIR/model.bin" >/dev/null
  page+=("$(read_gbs "$PLAIN_DIR/model.bin")")
  shm+=("$(read_gbs "$W/src/model.bin")")
  echo "rep $rep: build ${build_gbs[-1]} GB/s | encfs cold classic ${cold_e[-1]} uring ${cold_u[-1]} warm ${warm1_e[-1]}/${warm_e[-1]} | gocryptfs cold ${cold_g[-1]} | null FS ${null[-1]}/${null_u[-1]} copy FS ${copy[-1]}/${copy_u[-1]} | page cache ${page[-1]} tmpfs ${shm[-1]} GB/s" >&2
done

if ! cmp -s "$W/emnt/model.bin" "$W/src/model.bin"; then die "encfs content differs from the source"; fi
if ! cmp -s "$W/umnt/model.bin" "$W/src/model.bin"; then die "encfs (io_uring) content differs from the source"; fi

# How the page cache holds each warm file (large folios or single 4 KiB pages): the warm ratio depends on it.
folios_e=$(python3 "$REPO/benches/folio-sizes.py" "$W/emnt/model.bin" 2>&1 | sed 's/^[^:]*: //')
folios_p=$(python3 "$REPO/benches/folio-sizes.py" "$PLAIN_DIR/model.bin" 2>&1 | sed 's/^[^:]*: //')

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
mb=$(median "${build_gbs[@]}"); ce=$(median "${cold_e[@]}"); we=$(median "${warm_e[@]}"); we1=$(median "${warm1_e[@]}")
cb_cpu=$(median "${cpu_b[@]}")
cg=$(median "${cold_g[@]}"); nf=$(median "${null[@]}"); cf=$(median "${copy[@]}"); pc=$(median "${page[@]}"); sh=$(median "${shm[@]}")
ce_cpu=$(median "${cpu_e[@]}"); cg_cpu=$(median "${cpu_g[@]}")
cu=$(median "${cold_u[@]}"); wu=$(median "${warm_u[@]}"); nu=$(median "${null_u[@]}"); cu_f=$(median "${copy_u[@]}")
cu_cpu=$(median "${cpu_u[@]}"); n_cpu=$(median "${cpu_n[@]}"); nu_cpu=$(median "${cpu_nu[@]}")
c_cpu=$(median "${cpu_c[@]}"); cu_f_cpu=$(median "${cpu_cu[@]}")
dev=$(mountpoint -d "$W/emnt")
ra=$(cat "/sys/class/bdi/$dev/read_ahead_kb" 2>/dev/null || echo "?")
echo
echo "cinfer-encfs read benchmark: $SIZE_MIB MiB, $REPS reps (medians), kernel $(uname -r), $(nproc) cpus"
echo "  encfs mount: read_ahead_kb=$ra, threads=$ENCFS_THREADS, io=$ENCFS_IO; load before: $LOAD0, after: $LOAD1; max_pages_limit=$(cat /proc/sys/fs/fuse/max_pages_limit 2>/dev/null || echo '?')"
echo "  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); aes=$(grep -qw aes /proc/cpuinfo && echo y || echo n) vaes=$(grep -qw vaes /proc/cpuinfo && echo y || echo n)"
printf '  %-34s %8s GB/s\n' "cinfer-mkimage build" "$mb" "gocryptfs cold read" "$cg" \
  "encfs first re-read (classic)" "$we1" "encfs warm re-read (classic)" "$we" "encfs warm re-read (io_uring)" "$wu" \
  "plain page-cache read (ext4)" "$pc" "plain tmpfs read" "$sh"
printf '  %-34s %8s %8s GB/s    %8s %8s CPU-s/GiB (daemon only; robust to other load)\n' "cold reads" classic io_uring classic io_uring
printf '  %-34s %8s %8s         %8s %8s\n' "encfs" "$ce" "$cu" "$ce_cpu" "$cu_cpu" \
  "null FS (FUSE ceiling)" "$nf" "$nu" "$n_cpu" "$nu_cpu" "copy FS (no crypto)" "$cf" "$cu_f" "$c_cpu" "$cu_f_cpu"
printf '  %-34s %8s CPU-s/GiB\n' "gocryptfs cold read" "$cg_cpu"
# The CPU ceiling of each cold read: what it would reach if the daemon and the reader kept every core busy
# (cores / (daemon + reader CPU-s per GiB)). A ratio target above what the ceilings allow cannot be met on this
# machine by scheduling alone, only by spending less CPU per GiB.
ceiling() { awk -v d="$1" -v r="$2" -v n="$NPROC" 'BEGIN { printf "%.2f", n * 1.073741824 / (d + r) }'; }
re=$(median "${rd_e[@]}"); ru_rd=$(median "${rd_u[@]}"); rn=$(median "${rd_n[@]}"); rnu=$(median "${rd_nu[@]}")
rc_rd=$(median "${rd_c[@]}"); rcu_rd=$(median "${rd_cu[@]}"); rg=$(median "${rd_g[@]}")
ce_ceil=$(ceiling "$ce_cpu" "$re"); cu_ceil=$(ceiling "$cu_cpu" "$ru_rd"); c_ceil=$(ceiling "$c_cpu" "$rc_rd")
printf '  %-34s %8s %8s reader CPU-s/GiB  %8s %8s GB/s CPU ceiling (%s cores / (daemon + reader))\n' \
  "cold reads" classic io_uring classic io_uring "$NPROC"
printf '  %-34s %8s %8s                   %8s %8s\n' "encfs" "$re" "$ru_rd" "$ce_ceil" "$cu_ceil" \
  "null FS (FUSE ceiling)" "$rn" "$rnu" "$(ceiling "$n_cpu" "$rn")" "$(ceiling "$nu_cpu" "$rnu")" \
  "copy FS (no crypto)" "$rc_rd" "$rcu_rd" "$c_ceil" "$(ceiling "$cu_f_cpu" "$rcu_rd")" \
  "gocryptfs" "$rg" "-" "$(ceiling "$cg_cpu" "$rg")" "-"
printf '  %-34s %8s CPU-s/GiB (all threads)\n' "cinfer-mkimage build" "$cb_cpu"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "PASS" : "MISS" }'; }
rc=$(ratio "$ce" "$cg"); rw=$(ratio "$we" "$pc"); ru=$(ratio "$cu" "$cg"); rcopy=$(ratio "$cu" "$cf")
echo
printf '  %-34s %6sx  (target >= 2.5x)  %s\n' "cold: encfs io_uring / gocryptfs" "$ru" "$(verdict "$ru" 2.5)"
printf '  %-34s %6sx  (target >= 1.0x)  %s\n' "cold: encfs io_uring / copy classic" "$rcopy" "$(verdict "$rcopy" 1.0)"
printf '  %-34s %6sx  (< 1.0x: the 1.0x target needs less CPU per GiB, not better scheduling)\n' \
  "  encfs io_uring CPU ceiling / copy" "$(ratio "$cu_ceil" "$cf")"
printf '  %-34s %6sx  (of its CPU ceiling; copy FS classic: %sx)\n' "  encfs io_uring reached" \
  "$(ratio "$cu" "$cu_ceil")" "$(ratio "$cf" "$c_ceil")"
printf '  %-34s %6sx\n' "cold: encfs io_uring / classic" "$(ratio "$cu" "$ce")" \
  "cold: null FS io_uring / classic" "$(ratio "$nu" "$nf")" "cold: copy FS io_uring / classic" "$(ratio "$cu_f" "$cf")" \
  "cold: encfs io_uring / copy io_uring" "$(ratio "$cu" "$cu_f")"
printf '  %-34s %6sx  (target >= 2.5x)  %s\n' "cold: encfs classic / gocryptfs" "$rc" "$(verdict "$rc" 2.5)"
printf '  %-34s %6sx  (the most any FUSE daemon reaches here)\n' "cold: null FS / gocryptfs" "$(ratio "$nf" "$cg")"
printf '  %-34s %6sx  (the most a daemon reaches that reads its image)\n' "cold: copy FS / gocryptfs" \
  "$(ratio "$cf" "$cg")"
printf '  %-34s %6sx\n' "cold: encfs / null FS" "$(ratio "$ce" "$nf")" "cold: encfs / copy FS" "$(ratio "$ce" "$cf")"
printf '  %-34s %6sx  (target >= 0.8x)  %s\n' "warm: encfs / page cache" "$rw" "$(verdict "$rw" 0.8)"
printf '  %-34s %6sx\n' "warm: encfs / tmpfs" "$(ratio "$we" "$sh")"
echo "  page cache of the encfs file: $folios_e"
echo "  page cache of the ext4 file:  $folios_p"
printf '  %-34s %6s   (target >= 1 GB/s; 1 GB = 1e9 B)  %s\n' "build GB/s" "$mb" "$(verdict "$mb" 1.0)"
