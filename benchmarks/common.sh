# benchmarks/common.sh: sourced by the benchmark scripts. Moves to the source tree, lets Open MPI run as
# root where the scripts are run as root, names the launcher, checks pcmoe is built, and runs pcmoe so
# that its failures are shown (pcmoe_run). Results go under runs/ (BENCH_OUT=DIR: under DIR instead).
cd "$(dirname "$0")/.." || exit 2
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=${MPIRUN:-mpirun}
PCMOE=${PCMOE:-./pcmoe} # the binary (default: the one built in this tree)
[ -x "$PCMOE" ] || { echo "$PCMOE: not built: run scripts/build.sh first" >&2; exit 2; }

# pcmoe_run LOG COMMAND...: runs a pcmoe command (or its launcher line) with all its output in LOG. When
# it fails, shows the command, pcmoe's error lines (or the log's last lines when there are none) and
# exits with its status, so that a benchmark never ends silently or prints a table from a failed run.
pcmoe_run() {
    log=$1
    shift
    "$@" >"$log" 2>&1 && return 0
    rc=$?
    echo "benchmark: failed (exit $rc): $*" >&2
    if grep -q '^pcmoe: error' "$log"; then grep '^pcmoe: error' "$log" >&2; else tail -n 20 "$log" >&2; fi
    echo "benchmark: full output in $log" >&2
    exit "$rc"
}

# bench_config FILE PARTIES D_MODEL LAYERS HEADS SEQ_LEN EXPERTS EXPERT_FF BATCH STEPS: a config with every
# layer MoE (top-2, d_ff = 4 d_model, unused), no warm-up, evaluation or checkpoints, a metrics line per
# step, and party i on the i-th shipped corpus (reused past the sixth).
bench_config() {
    {
        printf '[parties]\ncount = %s\n[model]\nd_model = %s\nn_layers = %s\nn_heads = %s\nseq_len = %s\n' "$2" "$3" "$4" "$5" "$6"
        printf 'd_ff = %s\nn_experts = %s\ntop_k = 2\nexpert_ff = %s\nmoe_every = 1\n' $(($3 * 4)) "$7" "$8"
        printf '[train]\nbatch_size = %s\nsteps = %s\nwarmup_steps = 0\neval_every = 0\nlog_every = 1\n' "$9" "${10}"
        printf '[checkpoint]\nevery = 0\n[data]\n'
        i=0
        for c in shakespeare austen grimm sqlite3_h doyle shelley shakespeare austen; do
            [ "$i" -lt "$2" ] && printf '%d = input/data/%s.txt\n' "$i" "$c"
            i=$((i + 1))
        done
    } > "$1"
}

# median_tps RUN_DIR: the median tokens/s of RUN_DIR/metrics.jsonl's steps after 3 warm-up steps
median_tps() {
    grep -o '"tokens_per_s":[0-9.e+]*' "$1/metrics.jsonl" | cut -d: -f2 | tail -n +4 | sort -g |
        awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# flops_per_step RUN_DIR: the model FLOPs of its last logged step
flops_per_step() { grep -o '"flops":[0-9.e+]*' "$1/metrics.jsonl" | tail -n 1 | cut -d: -f2; }
