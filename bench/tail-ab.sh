#!/usr/bin/env bash
# Tail latency of two ringkv binaries, side by side: for each round, a
# fresh 3-node cluster of each binary in turn (order flipped every round),
# started as compare.sh starts its cluster (--worker-threads 1, lww bucket
# `bench` with N=3 R=2 W=2), preloaded, then `ringkv bench` YCSB B in open
# loop at RATE ops/s for DURATION seconds. Prints p50/p99/p99.9/max (ms) of
# reads, writes and all operations, each node's CPU per operation and the
# load generator's.
# Latency tails on a shared 2-core host move a lot from run to run: judge a
# change by many rounds, never by one.
#
#   bench/tail-ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [RATE]
#
# DURATION (env, default 10) is the measured time of each run. Starts and
# stops only its own nodes, by pid; every run is bounded by DURATION.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bench/tail-ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [RATE]" >&2
  exit 2
fi
OLD=$1 NEW=$2 ROUNDS=${3:-3} RATE=${4:-3600}
DURATION=${DURATION:-10}

WORK=$(mktemp -d /tmp/ringkv-tail-ab.XXXXXX)
PIDS=()
stop_nodes() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# run NAME BINARY: one cluster, one measured run; prints one line.
run() {
  local name=$1 bin=$2 dir="$WORK/$1" urls="" first_peer="" first_http="" i http peer join
  rm -rf "$dir"; mkdir -p "$dir"
  for i in 1 2 3; do
    http=$(free_port); peer=$(free_port)
    join=(); [ -n "$first_peer" ] && join=(--join "127.0.0.1:$first_peer")
    "$bin" server --name "n$i" --data-dir "$dir/n$i" --http-addr "127.0.0.1:$http" \
      --resp-addr "127.0.0.1:$(free_port)" --peer-addr "127.0.0.1:$peer" --worker-threads 1 \
      ${join[@]+"${join[@]}"} >"$dir/n$i.log" 2>&1 &
    PIDS+=("$!")
    urls+="${urls:+,}http://127.0.0.1:$http"
    if [ -z "$first_peer" ]; then first_peer=$peer first_http=$http; fi
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$http/healthz" >/dev/null || { echo "tail-ab.sh: node $i of $name did not start:" >&2; tail -n 20 "$dir/n$i.log" >&2; exit 1; }
  done
  for _ in $(seq 100); do
    [ "$(curl -sf "http://127.0.0.1:$first_http/v1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null)" = 3 ] && break
    sleep 0.2
  done
  curl -sf -X PUT "http://127.0.0.1:$first_http/v1/buckets/bench" -H 'content-type: application/json' \
    -d '{"n":3,"r":2,"w":2,"conflict":"lww"}' >/dev/null
  sleep 2 # bucket props spread by gossip
  "$bin" bench --target ringkv-http --url "$urls" --workload b --duration-s 3 --warmup-s 1 --preload >/dev/null
  local before=() after=() pid
  for pid in "${PIDS[@]}"; do before+=("$(awk '{print $14 + $15}' "/proc/$pid/stat")"); done
  "$bin" bench --target ringkv-http --url "$urls" --workload b --duration-s "$DURATION" --warmup-s 1 \
    --rate "$RATE" --json >"$dir/out.json"
  for pid in "${PIDS[@]}"; do after+=("$(awk '{print $14 + $15}' "/proc/$pid/stat")"); done
  stop_nodes
  python3 - "$dir/out.json" "$name" "$(getconf CLK_TCK)" "${before[*]}" "${after[*]}" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
name, hz = sys.argv[2], int(sys.argv[3])
before, after = map(int, sys.argv[4].split()), map(int, sys.argv[5].split())
ops = (report["ops"] + report.get("warmup_ops", 0)) or 1
cpu = " ".join(f"{(a - b) * 1e6 / hz / ops:.0f}" for b, a in zip(before, after))
parts = []
for kind in ("read", "write", "total"):
    l = report["latency_us"].get(kind)
    if l:
        parts.append(f"{kind} {l['p50_us']/1000:.2f}/{l['p99_us']/1000:.1f}/{l['p999_us']/1000:.1f}/{l['max_us']/1000:.1f}")
client = report.get("client_cpu_us_per_op")
client = f" | client CPU us/op {client:.0f}" if client is not None else ""
print(f"  {name}: {report['throughput_ops_s']:,.0f} ops/s | " + " | ".join(parts) + f" | node CPU us/op {cpu}{client}")
EOF
}

echo "YCSB B open loop at $RATE ops/s, ${DURATION} s per run, $ROUNDS rounds; latencies p50/p99/p99.9/max ms; old=$OLD new=$NEW"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then run old "$OLD"; run new "$NEW"; else run new "$NEW"; run old "$OLD"; fi
done
