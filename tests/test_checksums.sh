#!/bin/sh
# test_checksums: every dataset and /meta of a checkpoint carries a BLAKE2b-256 checksum, verified on every
# read. 2 parties train 20 steps (checkpoints at 10 and 20). One bit is flipped in party_0.h5 of step 20 in
# one dataset of each kind (a backbone and an expert weight, both AdamW moments, the batch sampler, the
# private shuffle, and /meta's config text); each time `pcmoe info`, `--resume` and `train.init_from` must
# fail with one error naming the file and the dataset, info and resume naming step 10 as the newest that
# verifies, and the damaged file must be left as it was. eval and generate name a damaged dataset too.
# `--resume=10` then resumes from step 10: step 20 is set aside (not deleted) and retrained to datasets
# bit-identical to the first run's. A checkpoint of format 1 (the checksums stripped, format_version 1: what
# pcmoe wrote before) loads with a warning in info, --resume and init_from.
. "$(dirname "$0")/lib.sh"

PY=$H5PY_PYTHON
if [ -z "$PY" ]; then
    [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no python3 with h5py (apt-get install python3-h5py)"; finish; }
    echo "SKIP: no python3 with h5py (apt-get install python3-h5py)"; exit 77
fi

tiny_config 2 "$TMP/p2.ini"
run="$TMP/run"
mpi 2 train "$TMP/p2.ini" --set checkpoint.every=10 --set run.dir="$run" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "training failed"; finish; }
step20="checkpoints/step_00000020/party_0.h5"
# the checksums pcmoe wrote against those computed without it (h5py, hashlib)
if $PY "$top_srcdir/tests/reference/ckpt_checksum.py" check "$run"/checkpoints/step_*/party_*.h5 >"$TMP/ref" 2>&1; then
    ok "every checksum of the 4 files matches the reference's: $(sed 's|.*/checkpoints/||' "$TMP/ref" | tr '\n' ' ')"
else fail "reference checksums: $(cat "$TMP/ref")"; fi

# flip FILE WHAT: one bit of FILE flipped, in the middle of dataset WHAT's bytes (/meta: in its config text)
flip() {
    $PY - "$1" "$2" <<'EOF'
import sys, h5py
path, what = sys.argv[1], sys.argv[2]
if what == "/meta":
    data = open(path, "rb").read()
    pos = data.index(b"shuffle_seed = 99") + len("shuffle_seed = 9")  # 99 -> 98: a valid config, another seed
else:
    with h5py.File(path, "r") as f:
        d = f[what].id
        pos = d.get_offset() + d.get_storage_size() // 2
with open(path, "r+b") as f:
    f.seek(pos)
    b = f.read(1)[0]
    f.seek(pos)
    f.write(bytes([b ^ 1]))
EOF
}

for what in /backbone/layer_0/attn_wqkv /experts/layer_1/expert_2/w_up /optim/adam_m/backbone/embed \
    /optim/adam_v/experts/layer_0/expert_4/w_down /data/rng_party_0 /data/shuffle_rng /meta; do
    k="$TMP/k"
    rm -rf "$k" "$TMP/if"
    cp -r "$run" "$k"
    flip "$k/$step20" "$what" || { fail "$what: could not flip a bit"; continue; }
    cp "$k/$step20" "$TMP/damaged.h5"
    named="party_0.h5: [a-z]* $what: checksum mismatch"
    "$PCMOE" info "$k" >"$TMP/info" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "pcmoe: error: .*$named" "$TMP/info" && grep -q "that verifies: step 10 " "$TMP/info"; then
        ok "$what: info: exit $rc, $(grep 'pcmoe: error' "$TMP/info" | sed 's|.*/checkpoints/||' | cut -c1-110)"
    else fail "$what: info exit $rc: $(cat "$TMP/info" | tail -n 3)"; fi
    mpi 2 train "$TMP/p2.ini" --set checkpoint.every=10 --set train.steps=25 --set run.dir="$k" --resume >"$TMP/out" 2>&1
    rc=$?
    n_err=$(grep -c "pcmoe: error:" "$TMP/out")
    if [ "$rc" -ne 0 ] && [ "$n_err" -eq 1 ] && grep -q "pcmoe: error: .*$named.*verifies is step 10: --resume=10" "$TMP/out" \
        && cmp -s "$k/$step20" "$TMP/damaged.h5" && ! grep -q '"step":21,' "$k/metrics.jsonl"; then
        ok "$what: --resume: exit $rc, one error line (...$(grep 'pcmoe: error' "$TMP/out" | sed 's|.*: checksum|checksum|')), the file untouched"
    else fail "$what: --resume exit $rc, $n_err error lines: $(grep -a 'error' "$TMP/out" | head -n 2)"; fi
    mpi 2 train "$TMP/p2.ini" --set train.steps=2 --set train.warmup_steps=1 --set train.init_from="$k/checkpoints/step_00000020" --set run.dir="$TMP/if" >"$TMP/out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "pcmoe: error: .*$named" "$TMP/out"; then ok "$what: train.init_from: exit $rc, named"
    else fail "$what: train.init_from exit $rc: $(grep -a 'error' "$TMP/out" | head -n 2)"; fi
done

# eval and generate read through the same verified load (bench and export too): party 1's embedding damaged
e="$TMP/e"
cp -r "$run" "$e"
flip "$e/checkpoints/step_00000020/party_1.h5" /backbone/embed
named="party_1.h5: dataset /backbone/embed: checksum mismatch"
mpi 2 eval "$TMP/p2.ini" --checkpoint "$e/checkpoints/step_00000020" >"$TMP/out" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "pcmoe: error: .*$named" "$TMP/out" && ok "eval: exit $rc, named" || fail "eval: exit $rc: $(grep error "$TMP/out")"
mpi 2 generate "$TMP/p2.ini" --checkpoint "$e/checkpoints/step_00000020" --party 1 --prompt "To be" --max-new 4 >"$TMP/out" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "pcmoe: error: .*$named" "$TMP/out" && ok "generate: exit $rc, named" || fail "generate: exit $rc: $(grep error "$TMP/out")"

# same_datasets A B: every dataset of checkpoint files A and B bit-identical, and their `steps` and checksums
# (the stored config differs: run.dir)
same_datasets() {
    $PY - "$1" "$2" <<'EOF'
import sys, h5py, numpy
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
for n in names:
    x, y = a[n], b[n]
    if x[()].tobytes() != y[()].tobytes() or dict(x.attrs) != dict(y.attrs):
        sys.exit("dataset /%s differs" % n)
print("all %d datasets bit-identical to the first run's, checksums too" % len(names))
EOF
}

# --resume=10 past the damaged step 20 (k holds the last damaged copy): step 20 set aside, then retrained exactly
if mpi 2 train "$TMP/p2.ini" --set checkpoint.every=10 --set run.dir="$k" --resume=10 >"$TMP/out" 2>&1 \
    && cmp -s "$k/checkpoints/step_00000020.set-aside/party_0.h5" "$TMP/damaged.h5"; then
    ok "--resume=10: $(grep 'set aside' "$TMP/out" | sed 's|/[^ ]*/checkpoints/||g' | cut -c1-120)"
else fail "--resume=10: $(grep -a 'error' "$TMP/out" | head -n 2)"; fi
for p in 0 1; do
    f="checkpoints/step_00000020/party_$p.h5"
    same_datasets "$run/$f" "$k/$f" >"$TMP/diff" 2>&1 && ok "--resume=10: party_$p.h5 of step 20 retrained: $(cat "$TMP/diff")" \
        || fail "--resume=10: party_$p.h5 of step 20 differs from the first run's: $(head -n 3 "$TMP/diff")"
done
"$PCMOE" info "$k" >"$TMP/info" 2>&1 && ok "--resume=10: the new step 20 verifies" || fail "info after --resume=10: $(tail -n 2 "$TMP/info")"
mpi 2 train "$TMP/p2.ini" --set run.dir="$k" --resume=15 >"$TMP/out" 2>&1
grep -q "pcmoe: error: .*--resume=15: .*no complete checkpoint of step 15 (complete: 10, 20)" "$TMP/out" \
    && ok "--resume=15 (no such checkpoint): $(grep 'pcmoe: error' "$TMP/out" | sed 's|run.dir = [^ ]*|run.dir = RUN|')" \
    || fail "--resume=15: $(cat "$TMP/out" | tail -n 2)"

# format 1: the checksums stripped, as pcmoe wrote before them
old="$TMP/old"
cp -r "$run" "$old"
$PY - "$old/checkpoints" <<'EOF'
import sys, glob, h5py, numpy
for path in glob.glob(sys.argv[1] + "/step_*/party_*.h5"):
    with h5py.File(path, "r+") as f:
        f["/meta"].attrs["format_version"] = numpy.int32(1)
        f.visititems(lambda name, obj: obj.attrs.__delitem__("blake2b") if "blake2b" in obj.attrs else None)
EOF
warn="warning: .*written before checkpoints carried checksums (format 1)"
"$PCMOE" info "$old" >"$TMP/info" 2>&1 && grep -q "$warn" "$TMP/info" && grep -q "checksums: none (format 1" "$TMP/info" \
    && ok "format 1: info loads it, warning: $(grep -m1 warning "$TMP/info" | sed 's|.*/checkpoints/||')" || fail "format 1: info: $(tail -n 3 "$TMP/info")"
if mpi 2 train "$TMP/p2.ini" --set checkpoint.every=10 --set train.steps=25 --set run.dir="$old" --resume >"$TMP/out" 2>&1 \
    && [ "$(grep -c "$warn" "$TMP/out")" -eq 1 ] && "$PCMOE" info "$old" >"$TMP/info" 2>&1 && grep -q "step 25.*" "$TMP/info" \
    && grep -q "checksums: /meta and" "$TMP/info"; then
    ok "format 1: --resume loads it with one warning; its step-25 checkpoint is checksummed"
else fail "format 1: --resume: $(grep -a 'error\|warning' "$TMP/out" | head -n 2)"; fi
mpi 2 train "$TMP/p2.ini" --set train.steps=2 --set train.warmup_steps=1 --set train.init_from="$old/checkpoints/step_00000010" --set run.dir="$TMP/if_old" >"$TMP/out" 2>&1 \
    && grep -q "$warn" "$TMP/out" && ok "format 1: train.init_from loads it with the warning" \
    || fail "format 1: init_from: $(grep -a 'error\|warning' "$TMP/out" | head -n 2)"
finish
