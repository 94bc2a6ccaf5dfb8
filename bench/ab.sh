#!/usr/bin/env bash
# Two ringkv binaries side by side: one single node each (N=R=W=1), both up
# at once, measured alternately with redis-benchmark (order flipped every
# round), reporting each round's throughput and the server's CPU time per
# request (from /proc/PID/stat). This is how a change to the request path is
# judged on a shared, noisy 2-core host: the ratio within a round counts,
# not the absolute numbers.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [TEST] [-- server flags...]
#
# TEST is a redis-benchmark test (set, get; default set); REQUESTS (env,
# default 100000) is the request count of each measurement; KEYSPACE (env,
# default unset: one key, as compare.sh measures) spreads the keys over
# that many random ones (redis-benchmark -r), which makes the memtable,
# the Merkle trees and the flushes work. Needs
# redis-benchmark (Debian: redis-tools). Starts and stops only its own two
# servers, by pid; each round is bounded by redis-benchmark's request count.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [TEST] [-- server flags...]" >&2
  exit 2
fi
OLD=$1 NEW=$2; shift 2
ROUNDS=4 TEST=set
if [ $# -gt 0 ] && [ "$1" != -- ]; then ROUNDS=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != -- ]; then TEST=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = -- ]; then shift; fi
SERVER_FLAGS=("$@")
REQUESTS=${REQUESTS:-100000}
KEYS_ARG=()
if [ -n "${KEYSPACE:-}" ]; then KEYS_ARG=(-r "$KEYSPACE"); fi
command -v redis-benchmark >/dev/null || { echo "ab.sh: redis-benchmark not found (apt-get install redis-tools)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ringkv-ab.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start NAME BINARY: one node; sets PORT (RESP) and PID.
start() {
  local name=$1 bin=$2 http peer
  PORT=$(free_port); http=$(free_port); peer=$(free_port)
  "$bin" server --name "$name" --data-dir "$WORK/$name" --http-addr "127.0.0.1:$http" \
    --resp-addr "127.0.0.1:$PORT" --peer-addr "127.0.0.1:$peer" ${SERVER_FLAGS[@]+"${SERVER_FLAGS[@]}"} >"$WORK/$name.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$http/healthz" >/dev/null || { echo "ab.sh: $name did not start:" >&2; tail -n 20 "$WORK/$name.log" >&2; exit 1; }
  curl -sf -X PUT "http://127.0.0.1:$http/v1/buckets/redis" -d '{"n":1,"r":1,"w":1,"conflict":"lww"}'
  # Untimed warm-up: a fresh node's first writes grow files a running one reuses.
  redis-benchmark -p "$PORT" -t set,get -n 50000 -c 50 -d 100 -q >/dev/null 2>&1
}

start old "$OLD"; OLD_PORT=$PORT OLD_PID=$PID
start new "$NEW"; NEW_PORT=$PORT NEW_PID=$PID

# measure PORT PID: "ops/s cpu-us-per-request"
measure() {
  local before after ops
  before=$(awk '{print $14 + $15}' "/proc/$2/stat")
  ops=$(redis-benchmark -p "$1" -t "$TEST" -n "$REQUESTS" -c 50 -d 100 ${KEYS_ARG[@]+"${KEYS_ARG[@]}"} -q --csv 2>/dev/null | tail -n1 | cut -d, -f2 | tr -d '"')
  after=$(awk '{print $14 + $15}' "/proc/$2/stat")
  python3 -c "print('$ops', round(($after - $before) * 1e6 / $(getconf CLK_TCK) / $REQUESTS, 1))"
}

echo "redis-benchmark -t $TEST -n $REQUESTS -c 50 -d 100 ${KEYS_ARG[*]}, $ROUNDS rounds; old=$OLD new=$NEW"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    old=$(measure "$OLD_PORT" "$OLD_PID"); new=$(measure "$NEW_PORT" "$NEW_PID")
  else
    new=$(measure "$NEW_PORT" "$NEW_PID"); old=$(measure "$OLD_PORT" "$OLD_PID")
  fi
  python3 -c "
o, n = '$old'.split(), '$new'.split()
print(f'round $round: old {float(o[0]):,.0f}/s {o[1]} us/req | new {float(n[0]):,.0f}/s {n[1]} us/req | new/old throughput {float(n[0]) / float(o[0]):.2f}')"
done
