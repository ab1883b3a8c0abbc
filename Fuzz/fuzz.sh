#!/usr/bin/env bash
# `make fuzz`: builds GantryFuzz with libFuzzer and AddressSanitizer in .build-fuzz/ (never .build/)
# and runs each target, one process at a time, from its seeds in Fuzz/corpus/<target>/.
# Crash, timeout and out-of-memory inputs are written to Fuzz/findings/<target>/. See docs/fuzzing.md.
#
#   RUNS=1000000      executions per target (default 100000)
#   TARGETS="cel spec" targets to run (default: all of `GantryFuzz list`)
#   TIMEOUT=1         seconds one input may take
#   RSS_LIMIT_MB=2048 MALLOC_LIMIT_MB=512   memory limits (the process; one allocation)
#   MAX_TIME=0        seconds per target, 0 for no limit
#   KEEP_GOING=1      go on past crashes, timeouts and OOMs (libFuzzer's -fork=1 with one worker
#                     process; each finding is still written to Fuzz/findings/<target>/)
#   FUZZ_FLAGS=...    more libFuzzer flags (-seed=1, ...)
set -uo pipefail
cd "$(dirname "$0")/.."

SWIFT=${SWIFT:-swift}
RUNS=${RUNS:-100000}
TIMEOUT=${TIMEOUT:-1}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-2048}
MALLOC_LIMIT_MB=${MALLOC_LIMIT_MB:-512}
MAX_TIME=${MAX_TIME:-0}
FUZZ_FLAGS=${FUZZ_FLAGS:-}
if [ "${KEEP_GOING:-0}" = 1 ]; then
  FUZZ_FLAGS="-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 $FUZZ_FLAGS"
fi
scratch=.build-fuzz/libfuzzer

# libFuzzer without its main(): SwiftPM's executable already has one, which calls LLVMFuzzerRunDriver.
# (-sanitize=fuzzer would link libFuzzer's own main() as well: a duplicate symbol.)
toolchain=$(dirname "$(dirname "$(readlink -f "$(command -v swiftc)")")")
runtime=$(ls "$toolchain"/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null | head -1)
symbolizer=$toolchain/bin/llvm-symbolizer
if [ -z "$runtime" ]; then
  echo "fuzz: libclang_rt.fuzzer_no_main-x86_64.a not found in the Swift toolchain at $toolchain" >&2
  exit 1
fi

echo "fuzz: building GantryFuzz (release, -sanitize=address, libFuzzer coverage) in $scratch"
# -enable-testing: the spec target reads SpecLoading's internal decoders through @testable import.
if ! "$SWIFT" build --scratch-path "$scratch" -c release --product GantryFuzz \
    -Xswiftc -sanitize=address \
    -Xswiftc -sanitize-coverage=edge,indirect-calls,trace-cmp,inline-8bit-counters,pc-table \
    -Xswiftc -enable-testing -Xswiftc -DFUZZING \
    -Xcxx -fsanitize=fuzzer-no-link,address \
    -Xlinker --whole-archive -Xlinker "$runtime" -Xlinker --no-whole-archive -Xlinker -lstdc++; then
  echo "fuzz: the build failed" >&2
  exit 1
fi
binary=$scratch/release/GantryFuzz
targets=${TARGETS:-$("$binary" list | cut -f1)}

export SWIFT_BACKTRACE=enable=no            # let libFuzzer and ASan report crashes
export ASAN_SYMBOLIZER_PATH=$symbolizer
# No leak checks: Swift's runtime caches look like leaks to LeakSanitizer, and libFuzzer would run
# every input that allocates more than it frees a second time to look for them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-symbolize=1:detect_leaks=0}
export GANTRY_FUZZ_SCRATCH=$PWD/.build-fuzz/scratch
mkdir -p "$GANTRY_FUZZ_SCRATCH"

summary=()
failed=0
for target in $targets; do
  max_len=$("$binary" list | awk -v t="$target" '$1 == t { print $3 }')
  corpus=.build-fuzz/corpus/$target           # grows as libFuzzer finds new coverage; not committed
  findings=Fuzz/findings/$target
  log=.build-fuzz/logs/$target.log
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  command=("$binary" "$target" "$corpus" "Fuzz/corpus/$target" -runs="$RUNS" -timeout="$TIMEOUT"
           -rss_limit_mb="$RSS_LIMIT_MB" -malloc_limit_mb="$MALLOC_LIMIT_MB" -max_len="$max_len"
           -max_total_time="$MAX_TIME" -detect_leaks=0 -artifact_prefix="$findings/" -print_final_stats=1 $FUZZ_FLAGS)
  # Tokens of the target's format (libFuzzer splices them into inputs), when there are some.
  [ -f "Fuzz/dictionaries/$target.dict" ] && command+=(-dict="Fuzz/dictionaries/$target.dict")
  echo "fuzz: ${command[*]}"
  start=$(date +%s.%N)
  "${command[@]}" > "$log" 2>&1
  status=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  executions=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{ print $2 }')
  executions=${executions:-$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')}
  # -fork mode: the parent's last status line counts what the workers found.
  found=$(grep -o 'oom/timeout/crash: [0-9/]*' "$log" | tail -1 | awk '{ print $2 }')
  rate=$(awk -v n="${executions:-0}" -v s="$seconds" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{ print $2 }')
  if [ $status -eq 0 ] && [ -n "$found" ] && [ "$found" != 0/0/0 ]; then
    failed=1
    outcome="FOUND oom/timeout/crash $found: $(ls "$findings" | grep -E '^(crash|timeout|oom|leak)-' | wc -l) input(s) in $findings"
  elif [ $status -eq 0 ]; then
    outcome=ok
  else
    failed=1
    outcome="FAILED (exit $status): $(grep -m1 -E '^==[0-9]+==ERROR|^ALARM|out-of-memory|deadly signal' "$log" | cut -c1-120)"
    artifact=$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //')
    [ -n "$artifact" ] && outcome="$outcome; input: $artifact"
    echo "fuzz: $target failed; stack in $log:" >&2
    grep -E '^ +#[0-9]+ ' "$log" | head -25 >&2
  fi
  line=$(printf '%-16s %10s executions %8.1f s %8s exec/s  cov %-6s %s' "$target" "${executions:-?}" "$seconds" "$rate" "${coverage:-?}" "$outcome")
  echo "fuzz: $line"
  summary+=("$line")
done
rm -rf "$GANTRY_FUZZ_SCRATCH"

echo
echo "fuzz: figures (RUNS=$RUNS, -timeout=$TIMEOUT, -rss_limit_mb=$RSS_LIMIT_MB, -malloc_limit_mb=$MALLOC_LIMIT_MB)"
printf '  %s\n' "${summary[@]}"
exit $failed
