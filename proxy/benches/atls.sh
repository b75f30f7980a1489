#!/usr/bin/env bash
# Throughput and latency of the attested-TLS proxy pair against an stunnel pair, in one run, against the
# same small upstream (proxy/examples/bench_backend.rs, which also runs the attestation service):
#
#   direct   wrk -> upstream
#   ours     wrk -> cinfer-proxy client (http_proxy, absolute form) -> attested TLS 1.3 -> cinfer-proxy server -> upstream
#   stunnel  wrk -> stunnel client -> TLS 1.3 -> stunnel server -> upstream
#
# Two phases: throughput (wrk -c CONNECTIONS) and latency (one connection, so percentiles are per-request cost).
# Prints req/s, p50, p99 per setup, ours/stunnel req/s and the latency ours adds over direct.
# Targets (issue): ours >= 1.5x stunnel req/s; added p99 <= 1 ms.
#
# Usage: bash proxy/benches/atls.sh [DURATION] [CONNECTIONS] [WRK_THREADS]   (defaults 5s 32 2)
#        ROUNDS=N interleaved rounds per phase, medians reported (default 3).
#        PROXY_THREADS=N sets the worker threads of each cinfer-proxy process (default 1).
# Needs: wrk, stunnel4, openssl, curl (apt-get install -y wrk stunnel4 when missing and root).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5s}
CONNS=${2:-32}
THREADS=${3:-2}
ROUNDS=${ROUNDS:-3}

for tool in wrk stunnel4; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk stunnel4 >/dev/null; else echo "need $tool (apt-get install wrk stunnel4)" >&2; exit 1; fi
  fi
done

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p proxy --bin cinfer-proxy --example bench_backend
BIN=$TARGET/release/cinfer-proxy
BACKEND=$TARGET/release/examples/bench_backend
MOCK_ROOT=attest/tests/data/mock-root
HOSTDATA=$(printf '11%.0s' {1..32})
MEASUREMENT=$(printf '5a%.0s' {1..48})

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

"$BACKEND" "$MOCK_ROOT" >"$WORK/backend.out" 2>"$WORK/backend.err" & PIDS+=($!)
for _ in $(seq 1 200); do grep -q UPSTREAM "$WORK/backend.out" 2>/dev/null && break; sleep 0.05; done
ATTEST_URL=$(sed -n 's/^ATTEST_URL=//p' "$WORK/backend.out")
UPSTREAM=$(sed -n 's/^UPSTREAM=//p' "$WORK/backend.out")

SRV=$(free_port); CLI=$(free_port); STS=$(free_port); STC=$(free_port)
export CINFER_LOG=warn
# Worker threads of each proxy process (default 1: wrk, the upstream and both proxies share the cores).
export CINFER_PROXY_THREADS=${PROXY_THREADS:-1}
"$BIN" server --listen "127.0.0.1:$SRV" --upstream "$UPSTREAM" --attestation-url "$ATTEST_URL" \
  --attester mock --mock-root "$MOCK_ROOT" --mock-host-data "$HOSTDATA" --mock-measurement "$MEASUREMENT" \
  2>"$WORK/server.err" & PIDS+=($!)
"$BIN" generate-policy --hostdata "$HOSTDATA" -o "$WORK/policy.json"
"$BIN" client --listen "127.0.0.1:$CLI" --policy "$WORK/policy.json" --attestation-url "$ATTEST_URL" \
  2>"$WORK/client.err" & PIDS+=($!)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=bench -days 1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat >"$WORK/stunnel-server.conf" <<CONF
foreground = yes
pid =
[srv]
accept = 127.0.0.1:$STS
connect = $UPSTREAM
cert = $WORK/cert.pem
key = $WORK/key.pem
sslVersionMin = TLSv1.3
CONF
cat >"$WORK/stunnel-client.conf" <<CONF
foreground = yes
pid =
[cli]
client = yes
accept = 127.0.0.1:$STC
connect = 127.0.0.1:$STS
sslVersionMin = TLSv1.3
CONF
stunnel4 "$WORK/stunnel-server.conf" 2>"$WORK/stunnel-server.err" & PIDS+=($!)
stunnel4 "$WORK/stunnel-client.conf" 2>"$WORK/stunnel-client.err" & PIDS+=($!)
for p in "$SRV" "$CLI" "$STS" "$STC"; do wait_port "$p"; done

# Sanity: each path answers.
test "$(curl -sS --max-time 5 "http://$UPSTREAM/")" = ok
test "$(curl -sS --max-time 10 -x "http://127.0.0.1:$CLI" "http://127.0.0.1:$SRV/")" = ok
test "$(curl -sS --max-time 5 "http://127.0.0.1:$STC/")" = ok

# wrk sends origin form; through an http_proxy the request line carries the absolute URL.
cat >"$WORK/abs.lua" <<LUA
wrk.path = "http://127.0.0.1:$SRV/"
wrk.headers["Host"] = "127.0.0.1:$SRV"
LUA

run() { # name url [wrk args]: one wrk run; appends req/s, p50, p99 (ms) to $WORK/<name>.<phase>
  local name=$1 url=$2; shift 2
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$WORK/$name.txt"
  local ms='{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/$name.txt")
  p50=$(awk '$1=="50%" '"$ms" "$WORK/$name.txt")
  p99=$(awk '$1=="99%" '"$ms" "$WORK/$name.txt")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$WORK/$name.txt" | tr '\n' ' ')
  [ -z "$errors" ] || echo "  $name: $errors" >&2
  echo "$rps $p50 $p99" >>"$WORK/$name.$PHASE"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1.$PHASE" | median; }
report() {
  for name in direct ours stunnel; do
    printf '  %-8s %12.0f req/s   p50 %7.3f ms   p99 %7.3f ms\n' "$name" "$(col "$name" 1)" "$(col "$name" 2)" "$(col "$name" 3)"
  done
}
phase() { # name: ROUNDS rounds of direct, ours, stunnel, interleaved so load changes hit all three alike
  PHASE=$1
  for _ in $(seq 1 "$ROUNDS"); do
    run direct "http://$UPSTREAM/"
    run ours "http://127.0.0.1:$CLI/" -s "$WORK/abs.lua"
    run stunnel "http://127.0.0.1:$STC/"
  done
}

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); medians of $ROUNDS interleaved rounds; proxies with $CINFER_PROXY_THREADS worker thread(s)"
phase throughput
echo "throughput: wrk -t$THREADS -c$CONNS -d$DURATION"
report
THR_ours=$(col ours 1) THR_stunnel=$(col stunnel 1)
# Added latency: one connection, one request at a time, so the percentiles are per-request cost, not queueing.
THREADS=1 CONNS=1
phase latency
echo "latency: wrk -t1 -c1 -d$DURATION"
report
awk -v o="$THR_ours" -v s="$THR_stunnel" -v po="$(col ours 3)" -v pd="$(col direct 3)" -v ps="$(col stunnel 3)" \
    -v mo="$(col ours 2)" -v md="$(col direct 2)" -v ms="$(col stunnel 2)" 'BEGIN {
  printf "ours/stunnel req/s (throughput): %.2fx (target >= 1.5x)\n", o / s;
  printf "added over direct (latency): p99 ours %.3f ms (target <= 1 ms), stunnel %.3f ms; p50 ours %.3f ms, stunnel %.3f ms\n", po - pd, ps - pd, mo - md, ms - md }'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
