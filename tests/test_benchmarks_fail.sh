#!/bin/sh
# test_benchmarks_fail: every benchmark script fails loudly. When pcmoe rejects a run (here: a config it
# refuses, or a launcher that fails), the script must exit non-zero and show pcmoe's error line (or the
# failed command's output) on stderr, never end silently or print a table. Results go to the test's own
# directory (BENCH_OUT), not the source tree's runs/.
. "$(dirname "$0")/lib.sh"
export BENCH_OUT="$TMP/bench" PCMOE # (the binary under test, also in a VPATH build)
export PEAK="$top_builddir/benchmarks/sgemm_peak"

# expect_loud NAME PATTERN COMMAND...: COMMAND exits non-zero and its stderr matches PATTERN
expect_loud() {
    name=$1 pattern=$2
    shift 2
    timeout 300 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "$pattern" "$TMP/$name.err"; then
        ok "$name: exit $rc, $(grep "$pattern" "$TMP/$name.err" | head -n 1)"
    else
        fail "$name: exit $rc; stderr: $(head -c 600 "$TMP/$name.err"); stdout: $(head -c 300 "$TMP/$name.out")"
    fi
}

# 0 steps: pcmoe says so and the script passes it on
expect_loud cpu_throughput "pcmoe: error: .*train.steps = 0" \
    sh "$top_srcdir/benchmarks/cpu_throughput.sh" 0 1
expect_loud attack "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/attack.sh" 0
expect_loud demo_table "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/demo_table.sh" 0
expect_loud finetune "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/finetune.sh" 0
expect_loud privacy "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/privacy.sh" 0 1
# large_vocab.sh: sequences of 0 tokens (or, without the test tools' Python, it says what is missing)
expect_loud large_vocab "pcmoe: error: .*seq_len = 0\|no Python with transformers" sh "$top_srcdir/benchmarks/large_vocab.sh" 1 0 1
expect_loud ranks "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/ranks.sh" 0
# memory.sh has no arguments: a launcher that fails stands in for a failing run
expect_loud memory "benchmark: failed (exit" env MPIRUN=false sh "$top_srcdir/benchmarks/memory.sh"
expect_loud sealing "pcmoe: error: .*train.steps" sh "$top_srcdir/benchmarks/sealing.sh" 0
# checkpoint.sh: 0 repeats
expect_loud checkpoint "benchmark: failed: " env CKPT_COST="$top_builddir/benchmarks/ckpt_cost" sh "$top_srcdir/benchmarks/checkpoint.sh" 0
# plot.sh runs no pcmoe: without runs to plot (or without gnuplot) it says what is missing
expect_loud plot "run benchmarks/demo_table.sh first\|needs gnuplot" sh "$top_srcdir/benchmarks/plot.sh"
# gpu.sh: 0 timed steps is refused, device or not
expect_loud gpu "gpu.sh: STEPS = 0: must be" sh "$top_srcdir/benchmarks/gpu.sh" 0
finish
