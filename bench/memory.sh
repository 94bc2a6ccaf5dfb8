#!/usr/bin/env bash
# Memory of one ringkv node holding KEYS keys of VALUE_BYTES bytes, for each
# engine page cache size given, beside redis-server holding the same keys:
# resident memory (VmRSS) once loaded, peak (VmHWM), the data on disk, read
# throughput over the whole key space (uniform, so most reads miss a small
# cache), and after a restart the time until it serves and its RSS.
#
#   bench/memory.sh [CACHE_MB...]          (default: 64 256 1024)
#
# KEYS (env, default 1000000), VALUE_BYTES (default 100), READ_S (default
# 10). The node runs with --durability buffered so that loading is quick
# (memory does not depend on it) and --worker-threads 1. Starts and stops
# only its own processes, by pid; every step is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/ringkv}
KEYS=${KEYS:-1000000}
VALUE_BYTES=${VALUE_BYTES:-100}
READ_S=${READ_S:-10}
CACHES=("$@")
[ ${#CACHES[@]} -gt 0 ] || CACHES=(64 256 1024)
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/ringkv-memory.XXXXXX)
PID=""
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
mib() { echo $(( $1 / 1024 )); }
wait_http() {  # wait_http URL SECONDS: seconds waited (one decimal)
  local start i
  start=$(date +%s%N)
  for i in $(seq $(( $2 * 10 ))); do
    if curl -sf "$1/healthz" >/dev/null; then
      awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN {printf "%.1f", ns / 1e9}'
      return 0
    fi
    sleep 0.1
  done
  echo "not ready after $2 s" >&2; return 1
}
# read_load ADDR: "ops/s p99" of uniform reads over every key.
read_load() {
  timeout $(( READ_S + 60 )) "$BIN" bench --target resp --addr "$1" --workload c \
    --distribution uniform --keys "$KEYS" --value-bytes "$VALUE_BYTES" \
    --duration-s "$READ_S" --warmup-s 1 --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%d %.2f" % (r["throughput_ops_s"], r["latency_us"]["total"]["p99_us"] / 1000))'
}
preload() {  # preload ADDR
  timeout 600 "$BIN" bench --target resp --addr "$1" --workload c --keys "$KEYS" \
    --value-bytes "$VALUE_BYTES" --preload --duration-s 1 --warmup-s 0 --json >/dev/null 2>&1
}

echo "| system | engine cache | RSS loaded | peak RSS | on disk | uniform reads/s | read p99 ms | restart: ready after | RSS after restart |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

for cache in "${CACHES[@]}"; do
  dir="$WORK/node-$cache"
  http=127.0.0.1:$(free_port) resp=127.0.0.1:$(free_port) peer=127.0.0.1:$(free_port)
  start_node() {
    "$BIN" server --name m1 --data-dir "$dir" --http-addr "$http" --resp-addr "$resp" \
      --peer-addr "$peer" --durability buffered --worker-threads 1 \
      --engine-cache-mb "$cache" >>"$WORK/node-$cache.log" 2>&1 &
    PID=$!
  }
  start_node
  wait_http "http://$http" 60 >/dev/null
  curl -sf -X PUT "http://$http/v1/buckets/redis" -H 'content-type: application/json' \
    -d '{"n":1,"r":1,"w":1,"conflict":"lww"}'
  preload "$resp"
  sleep 7 # one memtable flush interval (5 s) and a margin: the data is in redb
  rss=$(kib VmRSS) hwm=$(kib VmHWM)
  reads=$(read_load "$resp")
  disk=$(du -sm "$dir" | cut -f1)
  stop
  start_node
  ready=$(wait_http "http://$http" 300)
  sleep 10 # anti-entropy trees are rebuilt in the background after the start
  rss2=$(kib VmRSS)
  stop
  echo "| ringkv, 1 node | $cache MiB | $(mib "$rss") MiB | $(mib "$hwm") MiB | $disk MiB | ${reads% *} | ${reads#* } | ${ready} s | $(mib "$rss2") MiB |"
done

port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
PID=$!
for i in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
preload "127.0.0.1:$port"
rss=$(kib VmRSS) hwm=$(kib VmHWM)
reads=$(read_load "127.0.0.1:$port")
stop
echo "| redis-server (no persistence) | — | $(mib "$rss") MiB | $(mib "$hwm") MiB | — | ${reads% *} | ${reads#* } | — | — |"
echo
echo "KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES READ_S=$READ_S; $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); ringkv $(cd "$ROOT" && git rev-parse --short HEAD)"
