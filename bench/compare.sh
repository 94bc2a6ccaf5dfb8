#!/usr/bin/env bash
# bench/compare.sh [--quick] [--out FILE]
#
# Measures ringkv against the stores its users would pick instead, in one run
# on 127.0.0.1 with one client (`ringkv bench`) and one set of settings:
#   redis-server (no persistence; appendfsync everysec; appendfsync always),
#   a 3-member etcd cluster, a 1-node ringkv (N=1, durable; and, when the
#   binary has it, --durability buffered) and a 3-node ringkv (N=3 R=2 W=2).
# Also runs redis-benchmark with identical arguments against redis-server and
# ringkv's RESP port. Writes docs/BENCHMARKS.md (full mode) or a scratch
# report (--quick, about 2 minutes, for smoke tests).
#
# One system runs at a time; every process is started here, recorded by pid
# and stopped by pid. Traffic goes to 127.0.0.1 only. Every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SCRIPT_START=$(date +%s)

QUICK=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bench/compare.sh [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  DURATION_S=2; WARMUP_S=0.5; RB_REQUESTS=20000
  WORKLOADS=(write b)
  ROUNDS=1; ROUND_DURATION_S=2
else
  DURATION_S=10; WARMUP_S=2; RB_REQUESTS=100000
  WORKLOADS=(write a b c)
  ROUNDS=3; ROUND_DURATION_S=5
fi
CONNECTIONS=50
VALUE_BYTES=100
KEYS=10000
DISTRIBUTION=zipfian

WORK=$(mktemp -d /tmp/ringkv-compare.XXXXXX)
[ -n "$OUT" ] || OUT=$([ "$QUICK" = 1 ] && echo "$WORK/BENCHMARKS.quick.md" || echo "$ROOT/docs/BENCHMARKS.md")
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
: >"$WORK/commands.tsv"

# ---------------------------------------------------------------- processes
PIDS=()        # every process this script started and has not yet stopped

stop_pids() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

stop_all() {
  if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
  PIDS=()
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  if [ "$status" != 0 ]; then
    echo "compare.sh failed (exit $status); last lines of the logs:" >&2
    for log in "$WORK"/*.log; do
      [ -f "$log" ] || continue
      echo "--- $log" >&2; tail -n 5 "$log" >&2
    done
  fi
  if [ "$QUICK" = 1 ] && [ "$status" = 0 ] && [[ "$OUT" == "$WORK"/* ]]; then
    cp "$OUT" /tmp/ringkv-BENCHMARKS.quick.md
    echo "quick report: /tmp/ringkv-BENCHMARKS.quick.md" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background with its output in $WORK/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.1 s until it succeeds.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out after ${seconds}s waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

elapsed() { echo $(( $(date +%s) - SCRIPT_START )); }
say() { echo "[$(elapsed)s] $*" >&2; }

# ---------------------------------------------------------------- tools
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "missing ${need[*]} and not root: install them first" >&2; exit 1; fi
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "building ringkv (release)"
cargo build --release -p ringkv-cli >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; exit 1; }
# The code the binary was built from, read now: sources edited while the
# script runs are not in it.
VERSION_RINGKV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (with uncommitted changes)')"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ringkv"
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }
HAS_BUFFERED=0
if "$BIN" server --help 2>/dev/null | grep -q -- '--durability'; then HAS_BUFFERED=1; fi

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Scheduling noise of the host while nothing of ours runs: how late a thread
# that sleeps 1 ms wakes up (5 s of samples). Tail latencies here cannot be
# lower than a few of these added up.
say "measuring wake-up lateness of an idle thread (5 s)"
WAKE_LATE=$(python3 -c '
import time
late = []
end = time.monotonic() + 5
while time.monotonic() < end:
    t = time.perf_counter(); time.sleep(0.001); late.append(time.perf_counter() - t - 0.001)
late.sort()
q = lambda p: "%.2f" % (1000 * late[min(len(late) - 1, int(p * len(late)))])
print("p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms (%d samples)" % (q(.5), q(.99), q(.999), q(1), len(late)))
')
# CPU time stolen by the hypervisor (other guests on the host) over the run.
cpu_jiffies() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
# pids_jiffies PID...: user + system CPU time of these processes, in clock ticks.
pids_jiffies() { local pid sum=0; for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$sum"; }
read -r CPU_TOTAL_START CPU_STEAL_START < <(cpu_jiffies)

# ---------------------------------------------------------------- measuring
# bench SYSTEM WORKLOAD [ringkv bench flags...]: one measured run, JSON kept in
# $RESULTS/SYSTEM.WORKLOAD.json. Set ROUND=K to keep it as round K of the
# interleaved target measurements instead, and DURATION to shorten it.
bench() {
  local system=$1 workload=$2; shift 2
  local duration=${DURATION:-$DURATION_S} warmup=${WARMUP:-$WARMUP_S}
  local cmd=("$BIN" bench --workload "$workload" --distribution "$DISTRIBUTION" --keys "$KEYS"
    --value-bytes "$VALUE_BYTES" --connections "$CONNECTIONS" --duration-s "$duration"
    --warmup-s "$warmup" --json "$@")
  local out="$RESULTS/$system.$workload.json" tag=""
  if [ -n "${ROUND:-}" ]; then out="$RESULTS/targets/$system.$workload.$ROUND.json"; tag=" (round $ROUND)"; fi
  say "$system: ringkv bench --workload $workload $*$tag"
  # A run is bounded by warm-up + duration + the request timeout; the outer timeout is a backstop.
  timeout 180 "${cmd[@]}" >"$out" 2>"$WORK/bench.$system.$workload.log"
  printf '%s\t%s\t%s\n' "$system$tag" "$workload" "ringkv bench --workload $workload --distribution $DISTRIBUTION --keys $KEYS --value-bytes $VALUE_BYTES --connections $CONNECTIONS --duration-s $duration --warmup-s $warmup --json $*" >>"$WORK/commands.tsv"
}

# bench_workloads SYSTEM [flags...]: the workload list, preloading before the first read workload.
bench_workloads() {
  local system=$1; shift
  local preloaded=0 workload
  for workload in "${WORKLOADS[@]}"; do
    if [ "$workload" != write ] && [ "$preloaded" = 0 ]; then
      bench "$system" "$workload" "$@" --preload
      preloaded=1
    else
      bench "$system" "$workload" "$@"
    fi
  done
}

# redis_benchmark SYSTEM PORT: redis-benchmark with the same arguments for every server.
redis_benchmark() {
  local system=$1 port=$2
  local args=(-t set,get -n "$RB_REQUESTS" -c "$CONNECTIONS" -d "$VALUE_BYTES" -P 1 -q)
  say "$system: redis-benchmark ${args[*]}"
  timeout 300 redis-benchmark -h 127.0.0.1 -p "$port" "${args[@]}" --csv >"$RESULTS/$system.redis-benchmark.csv" 2>"$WORK/rb.$system.log"
  printf '%s\t%s\t%s\n' "$system" "redis-benchmark" "redis-benchmark -h 127.0.0.1 -p PORT ${args[*]} --csv" >>"$WORK/commands.tsv"
}

# redis_benchmark_round SYSTEM PORT TEST: one redis-benchmark test as round $ROUND of the targets.
redis_benchmark_round() {
  local system=$1 port=$2 test=$3
  local args=(-t "$test" -n "$RB_REQUESTS" -c "$CONNECTIONS" -d "$VALUE_BYTES" -P 1 -q)
  say "$system: redis-benchmark ${args[*]} (round $ROUND)"
  timeout 300 redis-benchmark -h 127.0.0.1 -p "$port" "${args[@]}" --csv >"$RESULTS/targets/$system.$test.$ROUND.csv" 2>"$WORK/rb.$system.log"
  printf '%s\t%s\t%s\n' "$system (round $ROUND)" "redis-benchmark" "redis-benchmark -h 127.0.0.1 -p PORT ${args[*]} --csv" >>"$WORK/commands.tsv"
}

# ---------------------------------------------------------------- redis
start_redis() {
  local name=$1 port=$2; shift 2
  mkdir -p "$WORK/$name"
  start "$name" redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/$name" --save '' --daemonize no "$@"
  wait_until 20 "$name" redis-cli -h 127.0.0.1 -p "$port" ping
}

run_redis() {
  local name=$1; shift
  local port; port=$(free_port)
  start_redis "$name" "$port" "$@"
  if [ "$name" = redis ]; then
    bench_workloads "$name" --target resp --addr "127.0.0.1:$port"
  else
    bench "$name" write --target resp --addr "127.0.0.1:$port"
  fi
  redis_benchmark "$name" "$port"
  stop_all
}

run_redis redis --appendonly no
run_redis redis-everysec --appendonly yes --appendfsync everysec
run_redis redis-always --appendonly yes --appendfsync always

# ---------------------------------------------------------------- etcd
# start_etcd_cluster PREFIX: starts a 3-member cluster; sets ETCD_URLS.
declare -a ETCD_CLIENT ETCD_PEER
start_etcd_cluster() {
  local prefix=$1 i cluster=""
  ETCD_URLS=""; ETCD_PIDS=()
  for i in 1 2 3; do
    ETCD_CLIENT[$i]=$(free_port); ETCD_PEER[$i]=$(free_port)
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${ETCD_PEER[$i]}"
    ETCD_URLS+="${ETCD_URLS:+,}http://127.0.0.1:${ETCD_CLIENT[$i]}"
  done
  for i in 1 2 3; do
    start "$prefix$i" env GOMAXPROCS=1 etcd --name "e$i" --data-dir "$WORK/$prefix$i" \
      --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "ringkv-bench-$prefix" \
      --logger zap --log-level warn
    ETCD_PIDS+=("${PIDS[-1]}")
  done
  for i in 1 2 3; do
    wait_until 60 "etcd member $i" curl -sf -X POST "http://127.0.0.1:${ETCD_CLIENT[$i]}/v3/kv/put" -d '{"key":"cmVhZHk=","value":"MQ=="}'
  done
}

say "etcd: starting 3 members"
start_etcd_cluster etcd
bench_workloads etcd --target etcd --url "$ETCD_URLS"
stop_all

# ---------------------------------------------------------------- ringkv
# start_ringkv NAME [server flags...]: starts a node; sets RK_HTTP, RK_RESP, RK_PEER.
# (Not called in $(...): a subshell would lose the pid.)
start_ringkv() {
  local name=$1; shift
  RK_HTTP=127.0.0.1:$(free_port); RK_RESP=127.0.0.1:$(free_port); RK_PEER=127.0.0.1:$(free_port)
  start "$name" "$BIN" server --name "$name" --data-dir "$WORK/$name" \
    --http-addr "$RK_HTTP" --resp-addr "$RK_RESP" --peer-addr "$RK_PEER" "$@"
  wait_until 60 "$name" curl -sf "http://$RK_HTTP/healthz"
}

# agreed URL...: every node lists every member at the same layout version.
agreed() {
  local expected=$# url versions=""
  for url in "$@"; do
    versions+="$(curl -sf "$url/v1/cluster" | python3 -c "import json,sys; c=json.load(sys.stdin); assert len(c['members'])==$expected; print(c['layout_version'])") " || return 1
  done
  [ "$(echo "$versions" | tr ' ' '\n' | grep -v '^$' | sort -u | wc -l)" = 1 ]
}

set_bucket() {  # set_bucket URL BUCKET JSON
  curl -sf -X PUT "$1/v1/buckets/$2" -H 'content-type: application/json' -d "$3" >/dev/null
}

# One node: N=1, R=1, W=1; lww buckets because YCSB updates are blind writes (as in Redis and etcd).
run_ringkv_single() {
  local name=$1; shift
  start_ringkv "$name" "$@"
  local http=$RK_HTTP resp=$RK_RESP
  set_bucket "http://$http" bench '{"n":1,"r":1,"w":1,"conflict":"lww"}'
  set_bucket "http://$http" redis '{"n":1,"r":1,"w":1,"conflict":"lww"}'
  if [ "$name" = ringkv-1 ]; then
    bench_workloads "$name-resp" --target resp --addr "$resp"
    bench_workloads "$name-http" --target ringkv-http --url "http://$http"
  else
    bench "$name-resp" write --target resp --addr "$resp"
    bench "$name-http" write --target ringkv-http --url "http://$http"
  fi
  redis_benchmark "$name-resp" "${resp##*:}"
  stop_all
}

# The 1-node ringkv serves with one thread, as redis-server does: the client
# shares this machine's 2 cores, and with one thread a node commits its own
# durable writes before it sleeps, as Redis's event loop does (no hand-off to
# the commit thread and back; docs/ARCHITECTURE.md "Threads").
run_ringkv_single ringkv-1 --worker-threads 1
if [ "$HAS_BUFFERED" = 1 ]; then
  run_ringkv_single ringkv-1-buffered --worker-threads 1 --durability buffered
fi

# start_ringkv_cluster PREFIX: starts 3 nodes (N=3 R=2 W=2 lww buckets `bench`
# and `redis`); sets R3_URLS and R1_RESP. The three members of each cluster
# share this machine's cores, so each serves with one thread: ringkv
# --worker-threads 1 here, GOMAXPROCS=1 for etcd (start_etcd_cluster).
start_ringkv_cluster() {
  local prefix=$1 r1_http r1_peer r2_http r3_http
  start_ringkv "$prefix-node1" --worker-threads 1
  r1_http=$RK_HTTP; r1_peer=$RK_PEER; R1_RESP=$RK_RESP
  start_ringkv "$prefix-node2" --worker-threads 1 --join "$r1_peer"
  r2_http=$RK_HTTP
  start_ringkv "$prefix-node3" --worker-threads 1 --join "$r1_peer"
  r3_http=$RK_HTTP
  wait_until 60 "the 3 ringkv nodes to agree on the layout" agreed "http://$r1_http" "http://$r2_http" "http://$r3_http"
  set_bucket "http://$r1_http" bench '{"n":3,"r":2,"w":2,"conflict":"lww"}'
  set_bucket "http://$r1_http" redis '{"n":3,"r":2,"w":2,"conflict":"lww"}'
  wait_until 30 "bucket props to spread" bash -c "for u in http://$r2_http http://$r3_http; do curl -sf \$u/v1/buckets/bench | grep -q '\"w\":2' || exit 1; curl -sf \$u/v1/buckets/bench | grep -q lww || exit 1; done"
  R3_URLS="http://$r1_http,http://$r2_http,http://$r3_http"
}

say "ringkv-3: starting 3 nodes"
start_ringkv_cluster ringkv-3
bench_workloads ringkv-3-http --target ringkv-http --url "$R3_URLS"
redis_benchmark ringkv-3-resp "${R1_RESP##*:}"
stop_all

# ---------------------------------------------------------------- targets, side by side
# The issue's targets are ratios between two systems. The host is shared
# (CPU steal and disk latency change from minute to minute), so each pair
# runs side by side: both systems are up at once, idle while the other is
# measured, and measured alternately for $ROUNDS rounds (the order flips
# every round). The report takes the median of the per-round ratios.
mkdir -p "$RESULTS/targets"
say "targets: redis-server (3 modes) and 1-node ringkv (sync, buffered), side by side"
T_REDIS=$(free_port); T_EVERYSEC=$(free_port); T_ALWAYS=$(free_port)
start_redis t-redis "$T_REDIS" --appendonly no
start_redis t-redis-everysec "$T_EVERYSEC" --appendonly yes --appendfsync everysec
start_redis t-redis-always "$T_ALWAYS" --appendonly yes --appendfsync always
start_ringkv t-ringkv-1 --worker-threads 1
T_RK1=${RK_RESP##*:}
set_bucket "http://$RK_HTTP" redis '{"n":1,"r":1,"w":1,"conflict":"lww"}'
T_RK1B=""
if [ "$HAS_BUFFERED" = 1 ]; then
  start_ringkv t-ringkv-1-buffered --worker-threads 1 --durability buffered
  T_RK1B=${RK_RESP##*:}
  set_bucket "http://$RK_HTTP" redis '{"n":1,"r":1,"w":1,"conflict":"lww"}'
fi
# The key redis-benchmark reads exists everywhere, with a 100-byte value, before any GET.
for port in "$T_REDIS" "$T_EVERYSEC" "$T_ALWAYS" "$T_RK1" $T_RK1B; do
  redis-cli -h 127.0.0.1 -p "$port" set key:__rand_int__ "$(printf 'x%.0s' $(seq "$VALUE_BYTES"))" >/dev/null
done
# pair PEER PEER_PORT RINGKV RINGKV_PORT TEST: one round of one pair, order flipped on even rounds.
pair() {
  if [ $((ROUND % 2)) = 1 ]; then
    redis_benchmark_round "$1" "$2" "$5"; redis_benchmark_round "$3" "$4" "$5"
  else
    redis_benchmark_round "$3" "$4" "$5"; redis_benchmark_round "$1" "$2" "$5"
  fi
}
# One untimed round first: these servers are fresh, and a fresh server's first
# writes grow files that a running one already has (redis's AOF; ringkv's first
# log files, until the space of removed ones is reused).
say "targets: one untimed warm-up round of redis-benchmark SET and GET per server"
for port in "$T_REDIS" "$T_EVERYSEC" "$T_ALWAYS" "$T_RK1" $T_RK1B; do
  timeout 300 redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "$RB_REQUESTS" -c "$CONNECTIONS" \
    -d "$VALUE_BYTES" -P 1 -q >/dev/null 2>&1
done
for ROUND in $(seq "$ROUNDS"); do
  pair redis "$T_REDIS" ringkv-1-resp "$T_RK1" GET
  pair redis-always "$T_ALWAYS" ringkv-1-resp "$T_RK1" SET
  if [ -n "$T_RK1B" ]; then pair redis-everysec "$T_EVERYSEC" ringkv-1-buffered-resp "$T_RK1B" SET; fi
done
unset ROUND
stop_all

say "targets: 3-member etcd and 3-node ringkv, side by side"
start_etcd_cluster t-etcd
start_ringkv_cluster t-ringkv-3
for ROUND in $(seq "$ROUNDS"); do
  if [ $((ROUND % 2)) = 1 ]; then
    DURATION=$ROUND_DURATION_S WARMUP=1 bench etcd write --target etcd --url "$ETCD_URLS"
    DURATION=$ROUND_DURATION_S WARMUP=1 bench ringkv-3-http write --target ringkv-http --url "$R3_URLS"
  else
    DURATION=$ROUND_DURATION_S WARMUP=1 bench ringkv-3-http write --target ringkv-http --url "$R3_URLS"
    DURATION=$ROUND_DURATION_S WARMUP=1 bench etcd write --target etcd --url "$ETCD_URLS"
  fi
done
# The p99.9 target: YCSB B open loop at half the closed-loop maximum, measured
# just before, with etcd stopped (the target is about ringkv alone). The CPU
# time stolen by the hypervisor is recorded for each run: tail latency on a
# shared host follows it.
stop_pids "${ETCD_PIDS[@]}"
REMAINING=()
for pid in "${PIDS[@]}"; do
  [[ " ${ETCD_PIDS[*]} " == *" $pid "* ]] || REMAINING+=("$pid")
done
PIDS=("${REMAINING[@]}")
ROUND=1 bench ringkv-3-http b --target ringkv-http --url "$R3_URLS" --preload
MAX_B=$(python3 -c "import json; print(json.load(open('$RESULTS/targets/ringkv-3-http.b.1.json'))['throughput_ops_s'])")
# open_run PERCENT: one open-loop run at PERCENT of that maximum, kept as
# system ringkv-3-http-open (the target's 50%) or ringkv-3-http-openPERCENT;
# besides its JSON, the CPU time the hypervisor stole over it and the three
# nodes' CPU time (the report divides it by the run's operations, beside
# the load generator's own figure).
open_run() {
  local percent=$1 system=ringkv-3-http-open total_before steal_before total_after steal_after nodes_before nodes_after
  [ "$percent" = 50 ] || system+=$percent
  read -r total_before steal_before < <(cpu_jiffies)
  nodes_before=$(pids_jiffies "${PIDS[@]}")
  bench "$system" b --target ringkv-http --url "$R3_URLS" --slow-ms 10 \
    --rate "$(python3 -c "print(max(1, round($MAX_B * $percent / 100)))")"
  nodes_after=$(pids_jiffies "${PIDS[@]}")
  read -r total_after steal_after < <(cpu_jiffies)
  python3 -c "t=$total_after-$total_before; print(round(100*($steal_after-$steal_before)/t) if t else 0)" \
    >"$RESULTS/targets/$system.b.$ROUND.steal"
  python3 -c "print(($nodes_after - $nodes_before) / $(getconf CLK_TCK))" \
    >"$RESULTS/targets/$system.b.$ROUND.nodecpu"
}
# The target's runs at half the maximum, and runs at a quarter and at 40%
# of it so that the report shows how the tail grows with the load; the
# three loads take turns within each round (in a rotating order), so that
# the host's noise falls on all of them alike.
for ROUND in $(seq "$ROUNDS"); do
  case $((ROUND % 3)) in
    1) order="50 25 40" ;;
    2) order="25 40 50" ;;
    *) order="40 50 25" ;;
  esac
  for percent in $order; do open_run "$percent"; done
done
unset ROUND
stop_all

# ---------------------------------------------------------------- report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
read -r CPU_TOTAL_END CPU_STEAL_END < <(cpu_jiffies)
CPU_STEAL_PCT=$(python3 -c "t=$CPU_TOTAL_END-$CPU_TOTAL_START; print(round(100*($CPU_STEAL_END-$CPU_STEAL_START)/t) if t else 0)")
TOTAL_S=$(elapsed)
say "writing $OUT"
export WAKE_LATE RESULTS WORK OUT QUICK DURATION_S WARMUP_S CONNECTIONS VALUE_BYTES KEYS DISTRIBUTION RB_REQUESTS HAS_BUFFERED LOAD_START LOAD_END TOTAL_S ROUNDS ROUND_DURATION_S CPU_STEAL_PCT
export MACHINE_NPROC="$(nproc)" MACHINE_KERNEL="$(uname -r)" MACHINE_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
export MACHINE_CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
export MACHINE_MEM="$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
export VERSION_REDIS="$(redis-server --version | head -n1)" VERSION_ETCD="$(etcd --version | head -n1)"
export VERSION_RINGKV
python3 "$ROOT/bench/report.py"
say "done in ${TOTAL_S}s"
