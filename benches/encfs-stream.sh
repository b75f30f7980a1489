#!/usr/bin/env bash
# Cold sequential read of one 2 GiB file, streamed from a local HTTP Range server, through
#   A: cinfer-encfs mounting the cinfer image by URL (HttpSource + CachingSource), and
#   B: `rclone mount` of the same data in rclone's crypt format over an rclone `http` remote,
# interleaved A/B, REPS times each, in one run (perf-anchors.md §4: same run, drop caches before each cold
# read, data on /dev/shm). Prints MB/s per run and the median per contender, and the ratio.
#
# Needs root (drop_caches, FUSE), python3, rclone (apt: rclone), fuse3, and release binaries:
#   CARGO_TARGET_DIR=... cargo build --release -p encfs -p mkimage --bins
# Env: SIZE_MIB (2048), REPS (3), BIN_DIR (target/release), PORT (free port picked).
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-2048}
REPS=${REPS:-3}
BIN_DIR=${BIN_DIR:-target/release}
ENCFS="$BIN_DIR/cinfer-encfs"
MKIMAGE="$BIN_DIR/cinfer-mkimage"
for b in "$ENCFS" "$MKIMAGE"; do [[ -x "$b" ]] || { echo "missing $b (cargo build --release)" >&2; exit 1; }; done
command -v rclone >/dev/null || { echo "rclone missing (apt-get install rclone)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/encfs-stream.XXXXXX)
server_pid=""
cleanup() {
  set +e
  fusermount3 -u -z "$work/mnt-enc" 2>/dev/null
  fusermount3 -u -z "$work/mnt-rc" 2>/dev/null
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plain/model" "$work/serve/rc" "$work/mnt-enc" "$work/mnt-rc"
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

echo "# data: ${SIZE_MIB} MiB of urandom"
head -c "${SIZE_MIB}M" /dev/urandom > "$work/plain/model/weights.bin"
"$MKIMAGE" build "$work/plain" -o "$work/serve/model.img" --key-file "$work/model.key" | tail -1

export RCLONE_CONFIG="$work/rclone.conf"
pass=$(rclone obscure cinfer-bench)
cat > "$RCLONE_CONFIG" <<EOF
[enclocal]
type = crypt
remote = $work/serve/rc
password = $pass
filename_encryption = off
directory_name_encryption = false

[web]
type = http
url = http://127.0.0.1:$PORT/rc/

[encweb]
type = crypt
remote = web:
password = $pass
filename_encryption = off
directory_name_encryption = false
EOF
rclone copy "$work/plain/model" enclocal:
rm -f "$work/plain/model/weights.bin"

# A threaded Range server with directory listings (rclone's http remote lists directories) and ETags.
cat > "$work/range_server.py" <<'EOF'
import http.server, os, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            return super().send_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404); return None
        st = os.fstat(f.fileno()); size = st.st_size
        etag = '"%x-%x"' % (st.st_ino, st.st_mtime_ns)
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            a = int(a); b = min(int(b) if b else size - 1, size - 1)
            if a >= size:
                self.send_response(416); self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0"); self.end_headers(); f.close(); return None
            self.send_response(206); self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, size))
        else:
            a, b = 0, size - 1
            self.send_response(200)
        self.send_header("Content-Length", str(b - a + 1)); self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes"); self.end_headers()
        self._range = (a, b - a + 1)
        return f
    def copyfile(self, src, dst):
        a, n = getattr(self, "_range", (0, None))
        if n is None:
            return super().copyfile(src, dst)
        try:
            while n > 0:
                sent = os.sendfile(dst.fileno(), src.fileno(), a, min(n, 8 << 20))
                if sent <= 0: break
                a += sent; n -= sent
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (rclone cancels open-ended ranges)
os.chdir(sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
EOF
python3 "$work/range_server.py" "$work/serve" "$PORT" &
server_pid=$!
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

echo "# kernel $(uname -r); $(nproc) cores; read_ahead default"
read_mbs() { # file -> MB/s of a cold dd
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(date +%s.%N)
  python3 -c "print(round($SIZE_MIB*1048576/1e6/($t1-$t0)))"
}
enc=(); rc=()
for i in $(seq "$REPS"); do
  "$ENCFS" mount "http://127.0.0.1:$PORT/model.img" "$work/mnt-enc" --key-file "$work/model.key"
  enc+=("$(read_mbs "$work/mnt-enc/model/weights.bin")")
  pid=$(pgrep -n -f 'cinfer-encfs mount .*daemon-child' || true)
  [[ -n "$pid" ]] && echo "  cinfer-encfs daemon peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
  fusermount3 -u "$work/mnt-enc"
  rclone mount encweb: "$work/mnt-rc" --read-only --daemon --vfs-cache-mode off
  for _ in $(seq 100); do [[ -e "$work/mnt-rc/weights.bin" ]] && break; sleep 0.1; done
  rc+=("$(read_mbs "$work/mnt-rc/weights.bin")")
  fusermount3 -u "$work/mnt-rc"
  echo "rep $i: cinfer-encfs ${enc[-1]} MB/s, rclone crypt ${rc[-1]} MB/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
me=$(median "${enc[@]}"); mr=$(median "${rc[@]}")
echo "median: cinfer-encfs $me MB/s (runs ${enc[*]}), rclone crypt $mr MB/s (runs ${rc[*]}), ratio $(python3 -c "print(round($me/$mr,2))")x"
