#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, on the stable
# toolchain with `--sanitizer none`) of every parser of outside bytes:
# peer frames and the messages inside them, RESP, causal contexts, objects,
# layouts, anti-entropy exchanges, bucket properties (DESIGN §9.5).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    # default 60 s, every target
#
# Starts from seeds written by `crates/wire/examples/fuzz_seeds.rs` plus
# whatever earlier runs left in fuzz/corpus; stops at the first failure,
# which libFuzzer saves under fuzz/artifacts/TARGET/ with the command that
# replays it. CI runs it for a few seconds per target.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz (once; about a minute)"
  cargo install --locked --quiet cargo-fuzz --version 0.13.2
fi

corpus=fuzz/corpus
cargo run --quiet -p ringkv-wire --example fuzz_seeds -- "$corpus"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer none
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  status=0
  cargo fuzz run --sanitizer none "$target" "$corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
done
echo "fuzzing passed: ${targets[*]}"
