#!/usr/bin/env bash
# Streaming benchmarks of cinfer-encfs over remote sources (perf-anchors.md §4: same run, interleaved, REPS
# repetitions, medians; caches dropped before every cold read; data on /dev/shm). Sections, chosen by argument
# (default `unshaped memory`; `all` runs every one):
#
#   unshaped  B8: cold sequential read of a SIZE_MIB file through cinfer-encfs mounting the image by URL from
#             nginx on loopback, vs `rclone mount` of the same data in rclone's crypt format over the same nginx.
#   memory    B10: the same read with --cache-size 256 vs an unbounded cache (8192): daemon peak RSS (VmHWM)
#             and the throughput ratio.
#   shaped    B7 + B11: nginx inside a network namespace behind a shaped link (1 Gbit/s each way; 1 ms and
#             25 ms delay each way = 2 ms and 50 ms RTT; tc netem on a veth pair, or benches/netdelay.py where
#             the kernel has no netem): throughput ÷ link rate, bytes on the wire (link counters) and HTTP body
#             bytes (encfs metrics) ÷ bytes read, time to first byte (open + read 1 byte). The namespace and
#             devices are removed on exit, also on failure.
#   azurite   B9: the image in Azurite (scripts/azurite.sh), cinfer-encfs by SAS URL vs a raw ranged-GET client
#             (Python http.client, 2 MiB ranges, AZ_CONC keep-alive connections) at the same concurrency (8).
#
# Needs root, fuse3, nginx (installed here if missing: apt nginx-light), rclone (apt), iproute2 (shaped),
# node + npm (azurite), and release binaries: CARGO_TARGET_DIR=... cargo build --release -p encfs -p mkimage
# Env: SIZE_MIB (2048), AZ_MIB (512), REPS (5), BIN_DIR (target/release), EXTRA (extra mount flags for encfs),
# DELAYS (one-way delays in ms for `shaped`, "1 25"), AZ_CONC (raw client concurrency for `azurite`, 8).
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-2048}
AZ_MIB=${AZ_MIB:-512}
REPS=${REPS:-5}
BIN_DIR=${BIN_DIR:-target/release}
EXTRA=${EXTRA:-}
ENCFS=$(realpath "$BIN_DIR/cinfer-encfs")
MKIMAGE=$(realpath "$BIN_DIR/cinfer-mkimage")
here=$(cd "$(dirname "$0")" && pwd)
sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(unshaped memory)
[[ " ${sections[*]} " == *" all "* ]] && sections=(unshaped memory shaped azurite)
for b in "$ENCFS" "$MKIMAGE"; do [[ -x "$b" ]] || { echo "missing $b (cargo build --release)" >&2; exit 1; }; done
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >/dev/null
command -v rclone >/dev/null || apt-get install -y -qq rclone >/dev/null

work=$(mktemp -d /dev/shm/encfs-stream.XXXXXX)
pids=()
NS=cinfer-bench-$$
VH=cbh$$
VS=cbs$$
cleanup() {
  set +e
  for m in "$work"/mnt-*; do mountpoint -q "$m" && fusermount3 -u -z "$m"; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  ip link del "$VH" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
mkdir -p "$work/plain/model" "$work/serve/rc" "$work/mnt-enc" "$work/mnt-rc" "$work/nginx"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s..%s", lo, hi}'; }
calc() { python3 -c "print($1)"; }

echo "# $(date -u +%FT%TZ) kernel $(uname -r); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg); sections: ${sections[*]}; REPS=$REPS"
echo "# data: ${SIZE_MIB} MiB of urandom"
head -c "${SIZE_MIB}M" /dev/urandom > "$work/plain/model/weights.bin"
# Every mount pins the root it was built with (--expect-root), as a deployment does.
ROOT=$("$MKIMAGE" build "$work/plain" -o "$work/serve/model.img" --key-file "$work/model.key" | tail -1 | sed 's/^root: //')
echo "root: $ROOT"

# nginx: static files with Range, ETag and If-Match support, autoindex for rclone's http remote.
nginx_conf() { # listen-address -> config path
  local conf="$work/nginx/$1.conf"
  cat > "$conf" <<EOF
daemon off;
user root;
worker_processes 2;
pid $work/nginx/$1.pid;
error_log $work/nginx/$1.error.log;
events { worker_connections 1024; }
http {
  default_type application/octet-stream;
  log_format bytes '\$body_bytes_sent';
  access_log $work/nginx/$1.access.log bytes;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  server {
    listen $1;
    root $work/serve;
    location / { autoindex on; }
  }
}
EOF
  echo "$conf"
}
wait_http() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no server at $1" >&2; return 1; }

cold_read() { # file -> seconds of a cold sequential dd
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(date +%s.%N)
  calc "$t1-$t0"
}
daemon_pid() { pgrep -n -f "cinfer-encfs mount .* $1 .*daemon-child"; }
unmount_enc() { # unmounts the encfs mount and waits for its daemon to exit (it frees the metrics port)
  local p
  p=$(daemon_pid "$work/mnt-enc" || true)
  fusermount3 -u "$work/mnt-enc"
  [[ -n "$p" ]] && while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
  return 0
}
cpu_s() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
hwm_mib() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
mbs() { calc "round($SIZE_MIB*1048576/1e6/$1)"; }

# --- unshaped + memory: nginx on loopback ---------------------------------------------------------------
if [[ " ${sections[*]} " == *" unshaped "* || " ${sections[*]} " == *" memory "* ]]; then
  PORT=$(free_port)
  nginx -c "$(nginx_conf "127.0.0.1:$PORT")" -p "$work/nginx" &
  pids+=($!)
  wait_http "http://127.0.0.1:$PORT/model.img"
  URL="http://127.0.0.1:$PORT/model.img"
fi

if [[ " ${sections[*]} " == *" unshaped "* ]]; then
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
  echo "## unshaped: cold dd bs=1M of ${SIZE_MIB} MiB, nginx on loopback; encfs flags: --cache-size 256 $EXTRA"
  # encfs on the classic transport, then over io_uring (interleaved; skipped where the kernel has none).
  uring_param=/sys/module/fuse/parameters/enable_uring
  uring_was=$(cat "$uring_param" 2>/dev/null || true)
  [[ -n "$uring_was" ]] && echo Y > "$uring_param"
  enc=(); rc=(); cpu=(); encu=(); cpuu=()
  for i in $(seq "$REPS"); do
    for t in classic uring; do
      [[ $t == uring && -z "$uring_was" ]] && continue
      # shellcheck disable=SC2086
      "$ENCFS" mount "$URL" "$work/mnt-enc" --key-file "$work/model.key" --expect-root "$ROOT" --cache-size 256 --transport "$t" $EXTRA
      pid=$(daemon_pid "$work/mnt-enc")
      c0=$(cpu_s "$pid")
      s=$(cold_read "$work/mnt-enc/model/weights.bin")
      if [[ $t == classic ]]; then
        enc+=("$(mbs "$s")"); cpu+=("$(calc "round(($(cpu_s "$pid")-$c0)/($SIZE_MIB/1024),2)")")
      else
        encu+=("$(mbs "$s")"); cpuu+=("$(calc "round(($(cpu_s "$pid")-$c0)/($SIZE_MIB/1024),2)")")
      fi
      unmount_enc
    done
    rclone mount encweb: "$work/mnt-rc" --read-only --daemon --vfs-cache-mode off
    for _ in $(seq 100); do [[ -e "$work/mnt-rc/weights.bin" ]] && break; sleep 0.1; done
    rc+=("$(mbs "$(cold_read "$work/mnt-rc/weights.bin")")")
    fusermount3 -u "$work/mnt-rc"
    echo "rep $i: cinfer-encfs ${enc[-1]} MB/s (${cpu[-1]} daemon CPU-s/GiB), io_uring ${encu[-1]:-n/a} MB/s (${cpuu[-1]:-n/a}), rclone crypt ${rc[-1]} MB/s; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  [[ -n "$uring_was" ]] && echo "$uring_was" > "$uring_param"
  me=$(median "${enc[@]}"); mr=$(median "${rc[@]}")
  echo "median: cinfer-encfs $me MB/s ($(minmax "${enc[@]}")), $(median "${cpu[@]}") CPU-s/GiB; rclone crypt $mr MB/s ($(minmax "${rc[@]}")); ratio $(calc "round($me/$mr,2)")x"
  if (( ${#encu[@]} )); then
    mu=$(median "${encu[@]}")
    echo "median: cinfer-encfs over io_uring $mu MB/s ($(minmax "${encu[@]}")), $(median "${cpuu[@]}") CPU-s/GiB; io_uring / classic $(calc "round($mu/$me,2)")x"
  fi
fi

if [[ " ${sections[*]} " == *" memory "* ]]; then
  echo "## memory: cold dd of ${SIZE_MIB} MiB, --cache-size 256 vs 8192 (unbounded), daemon VmHWM"
  b=(); u=(); bh=(); uh=()
  for i in $(seq "$REPS"); do
    for mode in 256 8192; do
      # shellcheck disable=SC2086
      "$ENCFS" mount "$URL" "$work/mnt-enc" --key-file "$work/model.key" --expect-root "$ROOT" --cache-size "$mode" $EXTRA
      pid=$(daemon_pid "$work/mnt-enc")
      r=$(mbs "$(cold_read "$work/mnt-enc/model/weights.bin")")
      h=$(hwm_mib "$pid")
      unmount_enc
      if [[ $mode == 256 ]]; then b+=("$r"); bh+=("$h"); else u+=("$r"); uh+=("$h"); fi
    done
    echo "rep $i: 256M ${b[-1]} MB/s peak RSS ${bh[-1]} MiB; unbounded ${u[-1]} MB/s peak RSS ${uh[-1]} MiB; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  mb=$(median "${b[@]}"); mu=$(median "${u[@]}")
  echo "median: 256M $mb MB/s, peak RSS $(median "${bh[@]}") MiB (max $(minmax "${bh[@]}")); unbounded $mu MB/s, peak RSS $(median "${uh[@]}") MiB; throughput ratio $(calc "round($mb/$mu,3)")"
fi

# --- shaped: nginx in a netns behind a shaped link -------------------------------------------------------
# With tc netem (CONFIG_NET_SCH_NETEM): a veth pair, netem delay + rate on both ends. Kernels without it (this
# Firecracker guest kernel has only htb and tbf) get the same link from benches/netdelay.py: two TUN devices
# joined by a user-space delay line (1 Gbit/s serialization + one-way delay per direction, tail drop), MTU 65000
# so it runs at 1 Gbit/s in Python. Either way the namespace and devices are removed on exit.
if [[ " ${sections[*]} " == *" shaped "* ]]; then
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip netns exec "$NS" nginx -c "$(nginx_conf 0.0.0.0:8080)" -p "$work/nginx" &
  pids+=($!)
  SURL="http://10.213.77.2:8080/model.img"
  MPORT=$(free_port)
  link_pid=""
  if ip link add "$VH" type veth peer name "$VS" && tc qdisc add dev "$VH" root netem delay 1ms 2>/dev/null; then
    how="veth + tc netem"
    ip link set "$VS" netns "$NS"
    ip addr add 10.213.77.1/30 dev "$VH"
    ip link set "$VH" up
    ip -n "$NS" addr add 10.213.77.2/30 dev "$VS"
    ip -n "$NS" link set "$VS" up
    link_up() {
      tc qdisc replace dev "$VH" root netem delay "${1}ms" rate 1gbit limit 100000
      ip netns exec "$NS" tc qdisc replace dev "$VS" root netem delay "${1}ms" rate 1gbit limit 100000
    }
    link_down() { :; }
  else
    ip link del "$VH" 2>/dev/null || true
    how="TUN delay line (benches/netdelay.py; no netem in this kernel)"
    link_up() {
      rm -f "$work/netdelay.out"
      python3 "$here/netdelay.py" "$VH" "$VS" "$1" 1e9 > "$work/netdelay.out" 2>> "$work/netdelay.log" &
      link_pid=$!
      pids+=("$link_pid")
      for _ in $(seq 50); do grep -q ready "$work/netdelay.out" 2>/dev/null && break; sleep 0.1; done
      ip link set "$VS" netns "$NS"
      ip addr add 10.213.77.1/30 dev "$VH"
      ip link set "$VH" mtu 65000 up
      ip -n "$NS" addr add 10.213.77.2/30 dev "$VS"
      ip -n "$NS" link set "$VS" mtu 65000 up
    }
    link_down() { kill "$link_pid"; wait "$link_pid" 2>/dev/null || true; cat "$work/netdelay.log"; : > "$work/netdelay.log"; }
  fi
  ttfb_ms() { # file -> ms for open + read 1 byte, cold
    sync; echo 3 > /proc/sys/vm/drop_caches
    python3 -c "
import time,sys
t=time.perf_counter(); f=open(sys.argv[1],'rb'); f.read(1); print(round((time.perf_counter()-t)*1e3,2))" "$1"
  }
  metric() { curl -fs "http://127.0.0.1:$MPORT/metrics" | awk -v n="cinfer_encfs_$1" '$1==n {print $2}'; }
  for d in ${DELAYS:-1 25}; do
    link_up "$d"
    wait_http "$SURL"
    # RTT: the TCP handshake time of a fresh connection (median of 3).
    rtt=$(median $(for _ in 1 2 3; do curl -s -o /dev/null -w '%{time_connect}\n' -r 0-0 "$SURL"; done | awk '{print $1*1000}'))
    echo "## shaped ($how): 1 Gbit/s, ${d} ms each way (TCP connect ${rtt} ms), cold dd of ${SIZE_MIB} MiB"
    # What the link gives one plain client: curl of the whole image on one connection.
    raw=$(curl -s -o /dev/null -w '%{speed_download}' "$SURL")
    echo "link check: curl, one connection: $(calc "round($raw*8/1e9,3)") Gbit/s"
    gbit=(); wire=(); body=(); tt=()
    for i in $(seq "$REPS"); do
      # shellcheck disable=SC2086
      "$ENCFS" mount "$SURL" "$work/mnt-enc" --key-file "$work/model.key" --expect-root "$ROOT" --metrics-addr "127.0.0.1:$MPORT" $EXTRA
      tt+=("$(ttfb_ms "$work/mnt-enc/model/weights.bin")")
      unmount_enc
      # shellcheck disable=SC2086
      "$ENCFS" mount "$SURL" "$work/mnt-enc" --key-file "$work/model.key" --expect-root "$ROOT" --metrics-addr "127.0.0.1:$MPORT" $EXTRA
      f0=$(metric source_bytes_fetched_total)
      r0=$(cat "/sys/class/net/$VH/statistics/rx_bytes")
      s=$(cold_read "$work/mnt-enc/model/weights.bin")
      r1=$(cat "/sys/class/net/$VH/statistics/rx_bytes")
      f1=$(metric source_bytes_fetched_total)
      unmount_enc
      bytes=$((SIZE_MIB * 1048576))
      gbit+=("$(calc "round($bytes*8/1e9/$s,3)")")
      wire+=("$(calc "round(($r1-$r0)/$bytes,4)")")
      body+=("$(calc "round(($f1-$f0)/$bytes,4)")")
      echo "rep $i: ${gbit[-1]} Gbit/s of plaintext; wire/read ${wire[-1]}, body/read ${body[-1]}; TTFB ${tt[-1]} ms; load $(cut -d' ' -f1 /proc/loadavg)"
    done
    echo "median: $(median "${gbit[@]}") Gbit/s = $(median "${gbit[@]}")x link ($(minmax "${gbit[@]}")); wire/read $(median "${wire[@]}"); body/read $(median "${body[@]}"); TTFB $(median "${tt[@]}") ms ($(minmax "${tt[@]}")) vs RTT $rtt ms"
    link_down
  done
fi

# --- azurite ----------------------------------------------------------------------------------------------
if [[ " ${sections[*]} " == *" azurite "* ]]; then
  az=$(bash "$here/../scripts/azurite.sh")
  APORT=$(free_port)
  mkdir -p "$work/azurite"
  "$az" --blobHost 127.0.0.1 --blobPort "$APORT" --location "$work/azurite" --skipApiVersionCheck --loose \
    --disableTelemetry --silent >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$APORT") 2>/dev/null && break; sleep 0.1; done
  sas=$(python3 - <<'EOF'
import base64, hmac, hashlib, urllib.parse
acct = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
sp, ss, srt, se, spr, sv = "rwdlac", "b", "sco", "2035-01-01T00:00:00Z", "https,http", "2019-12-12"
sig = base64.b64encode(hmac.new(key, f"{acct}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n".encode(), hashlib.sha256).digest()).decode()
q = urllib.parse.quote
print(f"sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={q(se, safe='')}&spr={q(spr, safe='')}&sig={q(sig, safe='')}")
EOF
)
  base="http://127.0.0.1:$APORT/devstoreaccount1/bench"
  curl -fs -X PUT "$base?restype=container&$sas" -H 'x-ms-version: 2019-12-12' -H 'Content-Length: 0'
  mkdir -p "$work/azplain/model"
  head -c "${AZ_MIB}M" /dev/urandom > "$work/azplain/model/weights.bin"
  AZ_ROOT=$("$MKIMAGE" build "$work/azplain" -o "$work/az.img" --key-file "$work/model.key" | tail -1 | sed 's/^root: //')
  curl -fs -X PUT -T "$work/az.img" "$base/model.img?$sas" -H 'x-ms-version: 2019-12-12' -H 'x-ms-blob-type: BlockBlob'
  len=$(stat -c %s "$work/az.img")
  rm -f "$work/azplain/model/weights.bin"
  raw_s() { # concurrency -> seconds for the whole blob in 2 MiB ranged GETs (keep-alive connections, one per worker)
    python3 - "$base/model.img?$sas" "$len" "$1" <<'PYEOF'
import http.client, sys, threading, time, urllib.parse
url, total, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
path = u.path + "?" + u.query
part = 2 << 20
todo = list(range(0, total, part))
lock = threading.Lock()
got = [0]
def worker():
    c = http.client.HTTPConnection(u.hostname, u.port)
    while True:
        with lock:
            if not todo:
                return
            a = todo.pop(0)
        c.request("GET", path, headers={"Range": "bytes=%d-%d" % (a, min(a + part, total) - 1), "x-ms-version": "2021-08-06"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 206, r.status
        with lock:
            got[0] += len(body)
t = time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(conc)]
for x in ts: x.start()
for x in ts: x.join()
assert got[0] == total, (got[0], total)
print(time.monotonic() - t)
PYEOF
  }
  conc=${AZ_CONC:-8}
  echo "## azurite: ${AZ_MIB} MiB image, cinfer-encfs (cold dd) vs raw ranged GETs (2 MiB, $conc connections)"
  e=(); r=()
  for i in $(seq "$REPS"); do
    # shellcheck disable=SC2086
    "$ENCFS" mount "$base/model.img?$sas" "$work/mnt-enc" --key-file "$work/model.key" --expect-root "$AZ_ROOT" $EXTRA
    s=$(cold_read "$work/mnt-enc/model/weights.bin")
    unmount_enc
    e+=("$(calc "round($AZ_MIB*1048576/1e6/$s)")")
    r+=("$(calc "round($len/1e6/$(raw_s "$conc"))")")
    echo "rep $i: cinfer-encfs ${e[-1]} MB/s, raw ranged GETs ${r[-1]} MB/s; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  me=$(median "${e[@]}"); mr=$(median "${r[@]}")
  echo "median: cinfer-encfs $me MB/s ($(minmax "${e[@]}")), raw $mr MB/s ($(minmax "${r[@]}")); ratio $(calc "round($me/$mr,2)")"
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
