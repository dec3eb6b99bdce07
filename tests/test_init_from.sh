#!/bin/sh
# test_init_from: train.init_from starts a run from another run's checkpoint. From a centralized source,
# each party of a pcmoe run over MPI (3 ranks), of the same run under --simulate, and of a local run
# starts at the validation loss `pcmoe eval` gives the source on the same data (<= 1e-6 relative at
# step 0); so does a pcmoe run from a pcmoe source of the same parties. Each party holds (and reads) only
# its own experts: its parameter bytes are its backbone plus its share, and at an expert-heavy shape
# reading the checkpoint leaves its peak RSS within 12 MiB of a random start (the others' experts: 36 MiB). A source with another model, a
# directory that is not a complete checkpoint, a local run of several parties and a pcmoe run of another
# party count are refused with one error line naming the problem.
. "$(dirname "$0")/lib.sh"

tiny_config 3 "$TMP/p3.ini"
# step0 RUN_DIR: "party val_loss" of every party's step-0 evaluation in RUN_DIR/metrics.jsonl
step0() { grep '"step":0,' "$1/metrics.jsonl" | grep '"val_loss"' | sed 's/.*"party":\([0-9]*\).*"val_loss":\([^,}]*\).*/\1 \2/' | sort -n; }
# evaluated FILE: "party val_loss" from pcmoe eval's output
evaluated() { sed -n 's/^party \([0-9]*\): val_loss \([0-9.]*\) .*/\1 \2/p' "$1" | sort -n; }
# agree NAME WANT GOT: the same parties, losses within 1e-6 relative (eval prints 6 decimals: 5e-7 more)
agree() {
    if [ "$(wc -l < "$2")" -eq 3 ] && [ "$(wc -l < "$3")" -eq 3 ] && join "$2" "$3" | awk '
        { d = $2 - $3; if (d < 0) d = -d; if (d > 1e-6 * $2 + 5e-7) bad = 1; if (d > w) w = d }
        END { printf "worst absolute difference %.2e\n", w; exit bad }' > "$TMP/agree"; then
        ok "$1: step-0 validation = pcmoe eval of the source, per party ($(cat "$TMP/agree"))"
    else
        fail "$1: step-0 validation differs from pcmoe eval of the source: want $(tr '\n' ' ' < "$2"), got $(tr '\n' ' ' < "$3")"
    fi
}

# a centralized source and its evaluation
mpi 1 train "$TMP/p3.ini" --set parties.mode=centralized --set train.steps=10 --set checkpoint.every=10 \
    --set run.dir="$TMP/central" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "centralized source run failed"; finish; }
src="$TMP/central/checkpoints/step_00000010"
mpi 1 eval "$TMP/p3.ini" --set parties.mode=centralized --checkpoint "$src" >"$TMP/eval_c.out" 2>&1 || { cat "$TMP/eval_c.out"; fail "eval of the source failed"; finish; }
evaluated "$TMP/eval_c.out" > "$TMP/want_c"

mpi 3 train "$TMP/p3.ini" --set train.init_from="$src" --set train.steps=2 --set train.warmup_steps=0 --set run.dir="$TMP/pc" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "pcmoe from the centralized source failed"; }
step0 "$TMP/pc" > "$TMP/got"
agree "pcmoe over MPI from centralized" "$TMP/want_c" "$TMP/got"
grep -q "starting from the weights of $src" "$TMP/out" && ok "rank 0 says where the weights come from" || fail "no 'starting from' line: $(cat "$TMP/out" | head -n 3)"
"$PCMOE" train "$TMP/p3.ini" --simulate --set train.init_from="$src" --set train.steps=2 --set train.warmup_steps=0 --set run.dir="$TMP/sim" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "--simulate from the centralized source failed"; }
step0 "$TMP/sim" > "$TMP/got"
agree "pcmoe --simulate from centralized" "$TMP/want_c" "$TMP/got"
mpi 3 train "$TMP/p3.ini" --set parties.mode=local --set train.init_from="$src" --set train.steps=2 --set train.warmup_steps=0 --set run.dir="$TMP/local" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "local from the centralized source failed"; }
step0 "$TMP/local" > "$TMP/got"
agree "local from centralized" "$TMP/want_c" "$TMP/got"

# only the party's own experts: parameter bytes = backbone + its share (tiny_config: 6 experts on 3 parties)
"$PYTHON" - "$TMP/pc/summary.json" <<'PY' && ok "each party holds only its own experts after init_from" || fail "parameter bytes after init_from"
import json, sys
V, d, L, m, f, P = 256, 32, 2, 6, 32, 3
backbone = 2 * V * d + d + L * (2 * d + 4 * d * d + m * d)
bad = 0
for s in json.load(open(sys.argv[1]))["parties"]:
    want = 4 * (backbone + (m // P) * L * 3 * d * f)
    print(f"party {s['party']}: params {s['mem_params']} bytes, want {want}")
    bad |= s["mem_params"] != want
sys.exit(bad)
PY

# a pcmoe source of the same parties: each party from its own backbone and the experts' owners
mpi 3 train "$TMP/p3.ini" --set train.steps=10 --set checkpoint.every=10 --set run.dir="$TMP/pcsrc" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "pcmoe source run failed"; finish; }
psrc="$TMP/pcsrc/checkpoints/step_00000010"
mpi 3 eval "$TMP/p3.ini" --checkpoint "$psrc" >"$TMP/eval_p.out" 2>&1 || { cat "$TMP/eval_p.out"; fail "eval of the pcmoe source failed"; }
evaluated "$TMP/eval_p.out" > "$TMP/want_p"
mpi 3 train "$TMP/p3.ini" --set train.init_from="$psrc" --set train.steps=2 --set train.warmup_steps=0 --set run.dir="$TMP/pc2" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "pcmoe from the pcmoe source failed"; }
step0 "$TMP/pc2" > "$TMP/got"
agree "pcmoe over MPI from pcmoe" "$TMP/want_p" "$TMP/got"

# only the party's own experts were read, by memory: at an expert-heavy shape (32 experts of 0.75 MiB per
# layer, 48 MiB of pool; 4 parties hold 12 MiB each) a party's peak RSS at step 0 (its parameters
# written, one forward, AdamW state not yet touched) is the same within 12 MiB whether the weights came
# from the centralized checkpoint (every expert in its file) or from random initialisation: reading the
# other parties' 36 MiB of experts, even one layer at a time, would add at least 18 MiB.
{
    printf '[parties]\ncount = 4\n[model]\nd_model = 64\nn_layers = 2\nn_heads = 2\nseq_len = 32\nd_ff = 128\n'
    printf 'n_experts = 32\ntop_k = 2\nexpert_ff = 1024\nmoe_every = 1\n'
    printf '[train]\nsteps = 1\nbatch_size = 2\nwarmup_steps = 0\neval_every = 1\neval_batches = 1\n[checkpoint]\nevery = 0\n[data]\n'
    printf '0 = input/data/shakespeare.txt\n1 = input/data/austen.txt\n2 = input/data/grimm.txt\n3 = input/data/sqlite3_h.txt\n'
} > "$TMP/big.ini"
if mpi 1 train "$TMP/big.ini" --set parties.mode=centralized --set checkpoint.every=1 --set run.dir="$TMP/bigc" >"$TMP/out" 2>&1 \
    && mpi 4 train "$TMP/big.ini" --set run.dir="$TMP/big_scratch" >"$TMP/out" 2>&1 \
    && mpi 4 train "$TMP/big.ini" --set train.init_from="$TMP/bigc/checkpoints/step_00000001" --set run.dir="$TMP/big_init" >"$TMP/out" 2>&1; then
    rss_step0 "$TMP/big_scratch/metrics.jsonl" "$TMP/big_init/metrics.jsonl" 4 12 \
        "init_from from a file holding all 32 experts per layer" "the other parties' experts are 36 MiB" >"$TMP/rss" 2>&1 \
        && ok "$(cat "$TMP/rss")" || fail "$(cat "$TMP/rss")"
else
    cat "$TMP/out"
    fail "the expert-heavy runs failed"
fi

# refusals: one error line, a non-zero exit
refused "another model" "model.d_model: checkpoint 32, config 64" mpi 3 train "$TMP/p3.ini" --set model.d_model=64 --set train.init_from="$src" --set run.dir="$TMP/x1"
refused "not a checkpoint" "train.init_from = $TMP/central: not a complete checkpoint directory" mpi 3 train "$TMP/p3.ini" --set train.init_from="$TMP/central" --set run.dir="$TMP/x2"
mpi 3 train "$TMP/p3.ini" --set parties.mode=local --set train.steps=2 --set train.warmup_steps=0 --set checkpoint.every=2 --set run.dir="$TMP/lsrc" >/dev/null 2>&1 || fail "local source run failed"
refused "a local source of 3 parties" "a local run of 3 parties holds one model per party" mpi 3 train "$TMP/p3.ini" --set train.init_from="$TMP/lsrc/checkpoints/step_00000002" --set run.dir="$TMP/x3"
tiny_config 2 "$TMP/p2.ini"
refused "a pcmoe source of other parties" "a pcmoe checkpoint of 3 parties gives each party its own backbone; this run has parties.count = 2" mpi 2 train "$TMP/p2.ini" --set train.init_from="$psrc" --set run.dir="$TMP/x4"
finish
