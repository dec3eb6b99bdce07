#!/bin/sh
# test_hf: Hugging Face MoE checkpoints against transformers itself. tests/hf/hf_check.py makes three tiny random
# checkpoints with transformers' own config classes and save_pretrained (nothing is downloaded):
# MixtralForCausalLM (sharded, F32), OlmoeForCausalLM (F32), Qwen3MoeForCausalLM (BF16, a dense first layer).
# For each:
#  - one forward and backward of pcmoe (tests/hf_dump, model.hf = the checkpoint) against transformers in fp32
#    on the same ids: logits within 1e-4 of the largest |logit|, the loss within 1e-5, every gradient within 1e-4
#    of its norm; with the LM head and cross-entropy on all rows at once and 7 rows at a time;
#  - pcmoe generate --checkpoint DIR --temperature 0 continues a prompt (through DIR/tokenizer.json, a tokenizer of
#    the family trained by the tokenizers library) with exactly transformers' greedy tokens, their
#    log-probabilities within 1e-4;
#  - pcmoe export of the checkpoint: transformers loads it, every tensor bit-identical to the original's, the same
#    logits (sharded, and in BF16, too); party 1's export of the fine-tune below loads, fine-tuned; over MPI (each
#    owner sends party 1 its experts, and the audit shows nothing else crossed) it writes the same files, byte for
#    byte; exports that name different exporters are refused;
#  - pcmoe bench --checkpoint DIR on 12 ARC-Easy items: every choice's log-likelihood within 1e-3 of transformers'
#    (the continuation's tokens as lm-evaluation-harness takes them);
#  - a 3-party pcmoe fine-tune from the checkpoint (train.init_from = DIR) on shipped corpora tokenized by
#    DIR/tokenizer.json over MPI gives the losses of --simulate, and its --audit shows only routed expert rows
#    crossing; for Mixtral, --simulate on the emulated CUDA backend gives the CPU's losses (the import through
#    the host's copies of the device's parameters).
# And: every broken checkpoint (header length, offsets, sizes, overlaps, a missing tensor, a wrong shape, an
# unreadable dtype, config.json's syntax, architecture and unsupported features) ends in one error line naming
# the file and the tensor or key; model.hf's keys conflict with a config's own by name.
. "$(dirname "$0")/lib.sh"

need_hf_python "transformers and torch"
DUMP="$top_builddir/tests/hf_dump"
"$HF_PY" "$top_srcdir/tests/hf/hf_check.py" make "$TMP/hf" >"$TMP/out" 2>&1 && ok "$(tail -n 1 "$TMP/out")" || { cat "$TMP/out"; fail "making the checkpoints"; finish; }
quiet() { grep -v -e "deprecated" -e "Loading checkpoint" -e "attention mask" "$1" | tail -n 3; }
printf 'ROMEO: But soft, what light' > "$TMP/prompt.txt"
head -n 12 input/eval/arc_easy.jsonl > "$TMP/task.jsonl"

for arch in mixtral olmoe qwen3; do
    d="$TMP/hf/$arch"
    # (b) logits, loss and gradients: the LM head on all 48 rows at once, and 7 rows at a time
    for rows in 0 7; do
        if "$DUMP" "$d/pcmoe.ini" "$d/ids.txt" "$d/dump.safetensors" $rows >"$TMP/out" 2>&1; then
            "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" check "$d" "$d/dump.safetensors" >"$TMP/ref" 2>&1 \
                && ok "$(quiet "$TMP/ref") (LM head: $([ $rows = 0 ] && echo all rows at once || echo $rows rows at a time))" \
                || fail "$arch: LM head rows $rows: $(quiet "$TMP/ref")"
        else fail "$arch: hf_dump: $(cat "$TMP/out")"; fi
    done
    # greedy generation
    # (seq_len 64: the prompt and the new tokens in one window, as transformers sees them)
    if "$PCMOE" generate "$d/pcmoe.ini" --set model.seq_len=64 --checkpoint "$d" --prompt-file "$TMP/prompt.txt" --temperature 0 --max-new 16 \
        --json "$d/gen.json" >"$TMP/gen.txt" 2>"$TMP/out"; then
        head -c "$(wc -c < "$TMP/prompt.txt")" "$TMP/gen.txt" | cmp -s - "$TMP/prompt.txt" && ok "$arch: generate prints the decoded text, the prompt first" \
            || fail "$arch: generate's stdout does not start with the prompt: $(head -c 80 "$TMP/gen.txt")"
        "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" generate "$d" "$TMP/prompt.txt" "$d/gen.json" >"$TMP/ref" 2>&1 \
            && ok "$(quiet "$TMP/ref")" || fail "$arch: generate: $(quiet "$TMP/ref")"
    else fail "$arch: generate: $(tail -n 3 "$TMP/out")"; fi
    # (c) export: HF -> pcmoe -> HF leaves every tensor bit-identical (F32; Qwen3's BF16 as fp32), and
    # transformers loads the result with the same logits; in BF16, the BF16 checkpoint's values again
    if "$PCMOE" export "$d/pcmoe.ini" --checkpoint "$d" --out "$TMP/$arch-export" >"$TMP/out" 2>&1; then
        "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" same "$d" "$TMP/$arch-export" bits >"$TMP/ref" 2>&1 \
            && ok "$arch: $(quiet "$TMP/ref")" || fail "$arch: export: $(quiet "$TMP/ref")"
    else fail "$arch: export: $(tail -n 3 "$TMP/out")"; fi
    # bench in tokens: every choice's log-likelihood against transformers' (lm-evaluation-harness's split)
    if "$PCMOE" bench "$d/pcmoe.ini" --set model.seq_len=128 --set data.0=input/data/austen.txt --checkpoint "$d" \
        --task "$TMP/task.jsonl" --json "$d/bench.json" >"$TMP/out" 2>&1; then
        "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" bench "$d" "$TMP/task.jsonl" "$d/bench.json" >"$TMP/ref" 2>&1 \
            && ok "$(quiet "$TMP/ref")" || fail "$arch: bench: $(quiet "$TMP/ref")"
    else fail "$arch: bench: $(tail -n 3 "$TMP/out")"; fi
    # (d) a 3-party fine-tune from the checkpoint: MPI = --simulate, and only routed rows cross
    {
        printf '[parties]\ncount = 3\n[privacy]\nshuffle_seed = 5\n[model]\nhf = %s\nseq_len = 24\n' "$d"
        printf '[train]\ninit_from = %s\nsteps = 4\nbatch_size = 2\nwarmup_steps = 1\neval_every = 4\neval_batches = 1\nlog_every = 1\n' "$d"
        printf '[checkpoint]\nevery = 0\n[data]\n0 = input/data/shakespeare.txt\n1 = input/data/austen.txt\n2 = input/data/doyle.txt\n'
    } > "$TMP/$arch.ini"
    if mpi 3 train "$TMP/$arch.ini" --set checkpoint.every=4 --set run.dir="$TMP/$arch-mpi" --audit "$TMP/$arch-audit.json" >"$TMP/out" 2>&1 \
        && "$PCMOE" train "$TMP/$arch.ini" --simulate --set run.dir="$TMP/$arch-sim" >"$TMP/out2" 2>&1; then
        a=$(grep -o '"train_loss":[^,]*' "$TMP/$arch-mpi/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
        b=$(grep -o '"train_loss":[^,]*' "$TMP/$arch-sim/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
        worst=$(printf '%s\n%s\n' "$a" "$b" | awk 'NR == 1 { n = split($0, x, " ") } NR == 2 { split($0, y, " "); w = 0
            for (i = 1; i <= n; i++) { e = (x[i] - y[i]) / y[i]; e = e < 0 ? -e : e; if (e > w) w = e }; print (n ? w : "none") }')
        [ "$worst" != none ] && float_lt "$worst" 1e-6 && ok "$arch: 3-party fine-tune from the checkpoint, MPI = --simulate (12 losses within $worst relative)" \
            || fail "$arch: MPI losses $a, --simulate $b"
        "$PYTHON" - "$TMP/$arch-mpi/metrics.jsonl" <<'PY' >"$TMP/ref" 2>&1 && ok "$arch: $(cat "$TMP/ref")" || fail "$arch: $(cat "$TMP/ref")"
import json, math, sys
v = [j for j in map(json.loads, open(sys.argv[1])) if "val_bpb" in j]
r = [j["val_loss"] / math.log(2) / j["val_bpb"] for j in v]
print(f"the corpora were read as the tokenizer's ids: {min(r):.2f} to {max(r):.2f} bytes of text per token in val_bpb")
sys.exit(0 if v and min(r) > 1.5 else 1)
PY
        dm=$(grep -o '"hidden_size": *[0-9]*' "$d/config.json" | grep -o '[0-9]*$')
        check_audit "$TMP/$arch-audit.json" pcmoe "$dm" 0 0 1 >"$TMP/ref" 2>&1 && ok "$arch: audit: $(cat "$TMP/ref")" || fail "$arch: audit: $(cat "$TMP/ref")"
        # the fine-tune exported (party 1's backbone, every expert; --simulate reads the three parties' files) loads
        # in transformers
        if "$PCMOE" export "$TMP/$arch.ini" --simulate --party 1 --checkpoint "$TMP/$arch-mpi/checkpoints/step_00000004" \
            --out "$TMP/$arch-ft" >"$TMP/out" 2>&1; then
            "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" same "$d" "$TMP/$arch-ft" differ >"$TMP/ref" 2>&1 \
                && ok "$arch: party 1's fine-tune: $(quiet "$TMP/ref")" || fail "$arch: fine-tune export: $(quiet "$TMP/ref")"
        else fail "$arch: fine-tune export: $(tail -n 3 "$TMP/out")"; fi
        # the same export over MPI: the owners send party 1 their experts (and nothing else), and its files are those
        # of the --simulate export, byte for byte
        if mpi 3 export "$TMP/$arch.ini" --party 1 --checkpoint "$TMP/$arch-mpi/checkpoints/step_00000004" \
            --out "$TMP/$arch-ftmpi" --audit "$TMP/$arch-xaudit.json" >"$TMP/out" 2>&1; then
            same=1
            for f in "$TMP/$arch-ft"/*; do cmp -s "$f" "$TMP/$arch-ftmpi/$(basename "$f")" || same=0; done
            [ "$(ls "$TMP/$arch-ft" | wc -l)" = "$(ls "$TMP/$arch-ftmpi" | wc -l)" ] || same=0
            [ $same = 1 ] && ok "$arch: export over MPI = export under --simulate, file for file, byte for byte" \
                || fail "$arch: export over MPI differs from --simulate's: $(ls "$TMP/$arch-ftmpi" | tr '\n' ' ')"
            "$PYTHON" - "$TMP/$arch-xaudit.json" "$d/config.json" <<'PY' >"$TMP/ref" 2>&1 && ok "$arch: $(cat "$TMP/ref")" || fail "$arch: $(cat "$TMP/ref")"
import json, sys
a, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
E = c.get("num_local_experts", c.get("num_experts"))
f = c.get("moe_intermediate_size", c["intermediate_size"])
moe = [l for l in range(c["num_hidden_layers"]) if l not in c.get("mlp_only_layers", [])]
errors = []
for r in a["ranks"]:
    q = r["party"]
    for way in ("sent", "recv"):
        for kind, t in r[way].items():
            if t["total"] and kind not in ("export_experts", "control", "audit"):
                errors.append(f"party {q} {way} {t['total']} bytes of {kind}")
    want = 0 if q == 1 else len(moe) * len([e for e in range(E) if e % 3 == q]) * 3 * c["hidden_size"] * f * 4
    got = r["sent"]["export_experts"]["per_party"]
    if got[1] != want or sum(got) != want:
        errors.append(f"party {q} sent {got} expert bytes, want {want} to party 1")
if errors:
    sys.exit("; ".join(errors))
print(f"export over MPI: only the owners' experts crossed, to party 1 ({len(moe)} MoE layers x {E} experts, none of party 1's sent)")
PY
        else fail "$arch: export over MPI: $(grep 'pcmoe: error' "$TMP/out" | head -n 2)"; fi
        # on the emulated CUDA backend (Mixtral only): the import reaches the device's buffers through the host's
        # copies, and the fine-tune's losses are the CPU's (to 1e-5; fp32 GEMMs)
        EMU="$top_builddir/tests/pcmoe_emu"
        if [ "$arch" = mixtral ] && [ -x "$EMU" ]; then
            if OMP_NUM_THREADS=1 timeout 600 "$EMU" train "$TMP/$arch.ini" --simulate --set run.device=cuda \
                --set run.tf32=false --set run.dir="$TMP/$arch-cuda" >"$TMP/out" 2>&1; then
                c=$(grep -o '"train_loss":[^,]*' "$TMP/$arch-cuda/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
                worst=$(printf '%s\n%s\n' "$b" "$c" | awk 'NR == 1 { n = split($0, x, " ") } NR == 2 { split($0, y, " "); w = 0
                    for (i = 1; i <= n; i++) { e = (x[i] - y[i]) / y[i]; e = e < 0 ? -e : e; if (e > w) w = e }; print (n ? w : "none") }')
                [ "$worst" != none ] && float_lt "$worst" 1e-5 \
                    && ok "$arch: the fine-tune from the checkpoint on the emulated cuda backend = cpu (within $worst relative)" \
                    || fail "$arch: cuda losses $c, cpu $b"
            else fail "$arch: cuda fine-tune: $(grep 'pcmoe: error' "$TMP/out" | head -n 2)"; fi
        fi
    else fail "$arch: fine-tune: $(grep 'pcmoe: error' "$TMP/out" "$TMP/out2" | head -n 2)"; fi
done

# an export over MPI needs every party to name the same exporter: --party 0 on one rank, 1 on the others is refused
"$MPIRUN" --oversubscribe -np 1 -x OMP_NUM_THREADS=1 "$PCMOE" export "$TMP/mixtral.ini" --party 0 \
    --checkpoint "$TMP/mixtral-mpi/checkpoints/step_00000004" --out "$TMP/x-mixed" : -np 2 -x OMP_NUM_THREADS=1 "$PCMOE" \
    export "$TMP/mixtral.ini" --party 1 --checkpoint "$TMP/mixtral-mpi/checkpoints/step_00000004" --out "$TMP/x-mixed" \
    >"$TMP/out" 2>&1
rc=$?
n=$(grep -c 'pcmoe: error' "$TMP/out")
if [ $rc = 2 ] && [ "$n" = 1 ] && grep -q -- '--party differs' "$TMP/out" && [ ! -e "$TMP/x-mixed" ]; then
    ok "exports naming different exporters are refused: $(grep 'pcmoe: error' "$TMP/out")"
else fail "mixed --party export: exit $rc, $n error lines: $(head -c 400 "$TMP/out")"; fi

# each party reads only its backbone and its own experts, a tensor at a time: from an expert-heavy checkpoint
# (32 experts of 0.75 MiB per layer, 48 MiB of pool; 4 parties own 12 MiB each) a party's peak RSS at step 0
# is the same within 6 MiB as from random weights: the other parties' 36 MiB of experts are never read
{
    printf '[parties]\ncount = 4\n[model]\nhf = %s\nseq_len = 32\n' "$TMP/hf/big"
    printf '[train]\nsteps = 1\nbatch_size = 2\nwarmup_steps = 0\neval_every = 1\neval_batches = 1\n[checkpoint]\nevery = 0\n[data]\n'
    printf '0 = input/data/shakespeare.txt\n1 = input/data/austen.txt\n2 = input/data/grimm.txt\n3 = input/data/sqlite3_h.txt\n'
} > "$TMP/big.ini"
if mpi 4 train "$TMP/big.ini" --set run.dir="$TMP/big_scratch" >"$TMP/out" 2>&1 \
    && mpi 4 train "$TMP/big.ini" --set train.init_from="$TMP/hf/big" --set run.dir="$TMP/big_init" >"$TMP/out" 2>&1; then
    rss_step0 "$TMP/big_scratch/metrics.jsonl" "$TMP/big_init/metrics.jsonl" 4 6 \
        "init_from a Hugging Face checkpoint of all 32 experts per layer (51 MB file)" "the other parties' experts are 36 MiB" \
        >"$TMP/rss" 2>&1 && ok "$(cat "$TMP/rss")" || fail "$(cat "$TMP/rss")"
else
    fail "the expert-heavy runs failed: $(grep 'pcmoe: error' "$TMP/out" | head -n 1)"
fi

# a sharded export (20 MB files of the 51 MB expert-heavy model) loads in transformers, bit-identical; and BF16
printf '[model]\nhf = %s\nseq_len = 32\n[data]\n0 = input/data/austen.txt\n' "$TMP/hf/big" > "$TMP/bigx.ini"
if "$PCMOE" export "$TMP/bigx.ini" --checkpoint "$TMP/hf/big" --out "$TMP/big-export" --max-shard-mb 20 >"$TMP/out" 2>&1 \
    && [ -f "$TMP/big-export/model.safetensors.index.json" ]; then
    "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" same "$TMP/hf/big" "$TMP/big-export" bits >"$TMP/ref" 2>&1 \
        && ok "sharded export ($(ls "$TMP/big-export" | grep -c 'model-.*safetensors') files): $(quiet "$TMP/ref")" || fail "sharded export: $(quiet "$TMP/ref")"
else fail "sharded export: $(tail -n 3 "$TMP/out")"; fi
if "$PCMOE" export "$TMP/hf/qwen3/pcmoe.ini" --checkpoint "$TMP/hf/qwen3" --out "$TMP/qwen3-bf16" --dtype bf16 >"$TMP/out" 2>&1; then
    "$HF_PY" "$top_srcdir/tests/hf/hf_check.py" same "$TMP/hf/qwen3" "$TMP/qwen3-bf16" bits >"$TMP/ref" 2>&1 \
        && ok "BF16 export of a BF16 checkpoint: $(quiet "$TMP/ref")" || fail "BF16 export: $(quiet "$TMP/ref")"
else fail "BF16 export: $(tail -n 3 "$TMP/out")"; fi
refused "export into a directory in use" "not empty; an export writes a new directory" \
    "$PCMOE" export "$TMP/hf/qwen3/pcmoe.ini" --checkpoint "$TMP/hf/qwen3" --out "$TMP/qwen3-bf16"
refused "a 3-party export on one rank without --simulate" "needs 3 MPI ranks, the job has 1" \
    "$PCMOE" export "$TMP/olmoe.ini" --checkpoint "$TMP/hf/olmoe" --out "$TMP/none"
refused "export without model.hf" "the config needs model.hf" "$PCMOE" export input/tiny.ini --checkpoint "$TMP/hf/olmoe" --out "$TMP/none"

# broken checkpoints: one error line each, naming the file and what is wrong
mkdir "$TMP/bad"
"$HF_PY" "$top_srcdir/tests/hf/hf_check.py" corrupt "$TMP/hf/olmoe" "$TMP/bad" >"$TMP/cases" 2>&1 || { cat "$TMP/cases"; fail "making the broken checkpoints"; }
while read -r name want; do
    refused "broken checkpoint ($name)" "$want" "$PCMOE" generate "$TMP/hf/olmoe/pcmoe.ini" --checkpoint "$TMP/bad/$name" --prompt x --max-new 2
done < "$TMP/cases"
refused "broken config.json through model.hf" "attention_bias = true" "$PCMOE" train "$TMP/olmoe.ini" --set model.hf="$TMP/bad/bias"
refused "a key model.hf sets, given otherwise" "model.d_model: $TMP/hf/olmoe/config.json gives 32 (hidden_size)" \
    "$PCMOE" train "$TMP/olmoe.ini" --set model.d_model=64
refused "seq_len past max_position_embeddings" "model.seq_len = 512: $TMP/hf/olmoe/config.json allows max_position_embeddings = 128" \
    "$PCMOE" train "$TMP/olmoe.ini" --set model.seq_len=512
refused "model.hf without config.json" "config.json: cannot read" "$PCMOE" train "$TMP/olmoe.ini" --set model.hf="$TMP"
mpi 3 train "$TMP/olmoe.ini" --set train.init_from="$TMP/bad/missing" --set run.dir="$TMP/bad-run" >"$TMP/out" 2>&1
n=$(grep -c "pcmoe: error:" "$TMP/out")
[ "$n" -ge 1 ] && grep -q "is missing" "$TMP/out" && ok "over MPI, a missing tensor stops every rank: $(grep -m1 'pcmoe: error' "$TMP/out" | cut -c1-150)" \
    || fail "over MPI, a missing tensor: $(tail -n 5 "$TMP/out")"
finish
