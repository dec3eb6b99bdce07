#!/bin/sh
# test_sealed: parties.keys seals everything that crosses a party line (docs/privacy.md, "The network").
#  1. pcmoe keygen writes a key pair (secret 0600, public .pub) and never overwrites one; bad keys files (others
#     may read it, a party's public key missing, a malformed key, another party's file) are refused, named.
#  2. A party whose file holds a wrong public key for another is refused at start, by both, before step 1.
#  3. With keys, the losses are bit-identical to the run without (3 parties; 2 parties of 2 ranks), generation
#     gives the same text, and the audit counts the same payload bytes plus the sealing overhead (16 bytes a
#     message), which is 0 without keys; rank 0 says once that a run without keys travels in the clear.
#  4. On the wire (tests/wire_tamper.c, a PMPI interposer on rank 0): a flipped bit in expert rows, in routing
#     counts or in an agreement, and a replayed routing-count message, each end the job with one error line
#     naming party 0 and the message, no process left and the last checkpoint intact. Without keys the same
#     flip in the rows is accepted silently: the job ends with exit 0 and other losses.
#  5. fedavg with keys trains (its average summed in party order); the CUDA backend (emulated) seals what it
#     stages, bit-identical to the run without keys, and its direct path is refused while keys are set.
. "$(dirname "$0")/lib.sh"
command -v mpicc >/dev/null || { echo "SKIP: no mpicc (the interposer is built with it)"; exit 77; }
tiny_config 3 "$TMP/p3.ini"
tiny_config 2 "$TMP/p2.ini"
K="$TMP/keys"
mkdir -p "$K"

# 1. keygen and the keys files
for p in 0 1 2; do "$PCMOE" keygen --party $p --out "$K/party$p.key" >"$TMP/kg" 2>&1 || fail "keygen party $p: $(cat "$TMP/kg")"; done
for p in 0 1 2; do for q in 0 1 2; do [ $p = $q ] || cat "$K/party$q.key.pub" >>"$K/party$p.key"; done; done
mode=$(stat -c %a "$K/party0.key")
[ "$mode" = 600 ] && grep -q '^public.0 = [0-9a-f]\{64\}$' "$K/party0.key.pub" && ok "keygen: party0.key mode $mode, $(grep -v '^#' "$K/party0.key.pub")" \
    || fail "keygen: mode $mode, pub: $(cat "$K/party0.key.pub")"
"$PCMOE" keygen --party 0 --out "$K/party0.key" >"$TMP/kg" 2>&1
[ $? -ne 0 ] && grep -q "never overwrites" "$TMP/kg" && ok "keygen refuses to overwrite: $(cut -c1-120 "$TMP/kg")" || fail "keygen overwrote: $(cat "$TMP/kg")"
keys="--set parties.keys=$K/party{party}.key"
bad_keys() { # bad_keys NAME WANT FILE_FOR_PARTY_0
    cp -r "$K" "$TMP/bad"
    cp "$3" "$TMP/bad/party0.key" 2>/dev/null
    chmod 600 "$TMP/bad"/*.key
    [ "$1" = readable ] && chmod 644 "$TMP/bad/party0.key"
    expect_error "keys file: $1" "$2" mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/r_bad" --set "parties.keys=$TMP/bad/party{party}.key"
    rm -rf "$TMP/bad" "$TMP/r_bad"
}
expect_error() { # expect_error NAME WANT COMMAND...: fails, one error line, containing WANT
    name=$1 want=$2
    shift 2
    "$@" >"$TMP/out" 2>&1
    rc=$?
    n=$(grep -c "pcmoe: error:" "$TMP/out")
    if [ "$rc" -ne 0 ] && [ "$n" -eq 1 ] && grep "pcmoe: error:" "$TMP/out" | grep -qF -- "$want"; then ok "$name (exit $rc): $(grep 'pcmoe: error:' "$TMP/out" | sed "s|$TMP|TMP|g" | cut -c1-170)"
    else fail "$name: exit $rc, $n error lines: $(grep 'pcmoe: error' "$TMP/out" | head -n 3)"; fi
}
bad_keys readable "others may read it (mode 644)" "$K/party0.key"
grep -v '^public.1' "$K/party0.key" >"$TMP/nopub"
bad_keys "a public key missing" "no public key for party 1" "$TMP/nopub"
sed 's/^public.2 = ..../public.2 = zzzz/' "$K/party0.key" >"$TMP/badhex"
bad_keys "a malformed key" ": public.2: not a key (64 hex digits)" "$TMP/badhex"
bad_keys "another party's file" "public.0 is not the public key of this file's secret key" "$K/party1.key"

# 2. a wrong public key: party 2 holds a key of its own making for party 0
"$PCMOE" keygen --party 0 --out "$TMP/stranger.key" >/dev/null
sed "s/^public.0 = .*/$(grep '^public.0' "$TMP/stranger.key.pub")/" "$K/party2.key" >"$TMP/p2wrong" && chmod 600 "$TMP/p2wrong"
cp -r "$K" "$TMP/wrong" && cp "$TMP/p2wrong" "$TMP/wrong/party2.key"
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/r_wrong" --set "parties.keys=$TMP/wrong/party{party}.key" >"$TMP/out" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && grep -q "\[rank 2\] .*what party 0 (rank 0) sealed does not open here" "$TMP/out" \
    && grep -q "\[rank 0\] .*what party 2 (rank 2) sealed does not open here" "$TMP/out" && ! grep -q '"step":1,' "$TMP/r_wrong/metrics.jsonl" 2>/dev/null; then
    ok "a wrong public key is refused at start by both parties (exit $rc): $(grep 'rank 2' "$TMP/out" | grep error | sed "s|$TMP|TMP|g" | cut -c1-200)"
else fail "wrong key: exit $rc: $(grep 'pcmoe: error' "$TMP/out")"; fi

# 3. the same losses with keys and without; the audit; the note
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/plain" --audit "$TMP/plain.audit" >"$TMP/plain.out" 2>&1 || fail "plain run: $(tail -n 3 "$TMP/plain.out")"
mpi 3 train "$TMP/p3.ini" --set run.dir="$TMP/keyed" --audit "$TMP/keyed.audit" $keys >"$TMP/keyed.out" 2>&1 || fail "keyed run: $(tail -n 3 "$TMP/keyed.out")"
out=$(same_losses "$TMP/plain/metrics.jsonl" "$TMP/keyed/metrics.jsonl") && ok "3 parties, keys and none: $out" || fail "keys change the losses: $out"
[ "$(grep -c 'parties.keys is not set: .* travels unencrypted' "$TMP/plain.out")" -eq 1 ] && ! grep -q 'unencrypted' "$TMP/keyed.out" \
    && ok "without keys rank 0 says so, once: $(grep -m1 'not set' "$TMP/plain.out" | cut -c1-120)" || fail "the unencrypted note: $(grep -c unencrypted "$TMP/plain.out") lines"
"$PYTHON" - "$TMP/plain.audit" "$TMP/keyed.audit" <<'EOF' >"$TMP/audit.out" 2>&1 && ok "audit: $(cat "$TMP/audit.out")" || fail "audit: $(cat "$TMP/audit.out")"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
errors, overhead, n_sealed = [], 0, 0
for ra, rb in zip(a["ranks"], b["ranks"]):
    for way in ("sent", "recv"):
        for kind, t in ra[way].items():
            if kind not in ("control", "audit") and t["per_party"] != rb[way][kind]["per_party"]:
                errors.append(f"rank {ra['rank']} {way} {kind}: {t['per_party']} without keys, {rb[way][kind]['per_party']} with")
        if any(ra["sealing_overhead"][way].values()):
            errors.append(f"rank {ra['rank']}: sealing overhead without keys")
        o = rb["sealing_overhead"][way]
        if o["expert_rows"] <= 0 or any(v % 16 for v in o.values()):
            errors.append(f"rank {rb['rank']} {way}: overhead {o}")
    overhead += sum(rb["sealing_overhead"]["sent"].values())
    n_sealed += rb["sent"]["expert_rows"]["total"]
if "xchacha20poly1305" not in b["sealing"] or "none" not in a["sealing"]:
    errors.append(f"sealing: {a['sealing']} / {b['sealing']}")
print("; ".join(errors) if errors else
      f"the same payload bytes with keys as without (every kind but control); {overhead:.0f} bytes of tags sent "
      f"with keys ({overhead / 16:.0f} sealed messages), none without")
sys.exit(1 if errors else 0)
EOF
r2="--set parties.ranks_per_party=2 --set train.steps=10"
mpi 4 train "$TMP/p2.ini" $r2 --set run.dir="$TMP/plain_r2" >"$TMP/out" 2>&1 || fail "R=2 plain: $(tail -n 3 "$TMP/out")"
mpi 4 train "$TMP/p2.ini" $r2 --set run.dir="$TMP/keyed_r2" "--set=parties.keys=$K/party{party}.key" >"$TMP/out" 2>&1 || fail "R=2 keyed: $(grep error "$TMP/out")"
out=$(same_losses "$TMP/plain_r2/metrics.jsonl" "$TMP/keyed_r2/metrics.jsonl") && ok "2 parties of 2 ranks (inside a party: not sealed), keys and none: $out" \
    || fail "R=2: keys change the losses: $out"
gen="--checkpoint $TMP/plain/checkpoints/step_00000020 --party 1 --prompt To_be --max-new 24 --temperature 0"
mpi 3 generate "$TMP/p3.ini" $gen >"$TMP/gen_plain" 2>/dev/null && mpi 3 generate "$TMP/p3.ini" $gen $keys >"$TMP/gen_keyed" 2>"$TMP/out" \
    && cmp -s "$TMP/gen_plain" "$TMP/gen_keyed" && ok "generate with keys: the same text ($(wc -c < "$TMP/gen_keyed") bytes), the experts served sealed" \
    || fail "generate with keys: $(grep error "$TMP/out"; diff "$TMP/gen_plain" "$TMP/gen_keyed" | head -n 3)"

# 4. on the wire
cc_out="$TMP/wire_tamper.so"
mpicc -shared -fPIC -O1 -o "$cc_out" "$top_srcdir/tests/wire_tamper.c" 2>"$TMP/cc.log" || { cat "$TMP/cc.log"; fail "building the interposer"; finish; }
# attack NAME SIZE AFTER MODE WANT_KIND [KEYS...]: rank 0's pieces of SIZE bytes tampered after AFTER of them
attack() {
    name=$1 size=$2 after=$3 amode=$4 kind=$5
    shift 5
    d="$TMP/w_$name"
    timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 -x LD_PRELOAD="$cc_out" -x TAMPER_RANK=0 -x TAMPER_SIZE="$size" \
        -x TAMPER_AFTER="$after" -x TAMPER_MODE="$amode" "$PCMOE" train "$TMP/p3.ini" --set run.dir="$d" --set checkpoint.every=5 \
        --set checkpoint.keep=10 "$@" >"$TMP/w.out" 2>&1
    rc=$?
    sleep 1
    left=$(pgrep -f -- "run.dir=$d" | wc -l)
}
for case in "rows 100-100000000 300 flip expert_rows\|expert_outputs\|output_grads\|input_grads" "counts 32-32 50 flip routing_counts" \
    "control 20-24 40 flip control" "replay 32-32 50 replay routing_counts"; do
    set -- $case
    attack "$1" "$2" "$3" "$4" "$5" $keys
    n=$(grep -c "pcmoe: error:" "$TMP/w.out")
    last=$(ls -d "$d"/checkpoints/step_*/COMPLETE 2>/dev/null | tail -n 1)
    if [ "$rc" -ne 0 ] && [ "$n" -eq 1 ] && grep -q "wire_tamper: " "$TMP/w.out" \
        && grep "pcmoe: error:" "$TMP/w.out" | grep -q "party 0 (rank 0): its \($5\) message .* does not open" \
        && [ "$left" -eq 0 ] && [ -n "$last" ] && "$PCMOE" info "$d" >/dev/null 2>&1; then
        ok "wire, $1 ($(grep -m1 wire_tamper "$TMP/w.out" | cut -c14-80)): exit $rc, $(grep 'pcmoe: error:' "$TMP/w.out" | sed 's/.*\] //' | cut -c1-110)...; checkpoint $(basename "$(dirname "$last")") intact"
    else fail "wire, $1: exit $rc, $n error lines, $left processes left, last checkpoint '$last': $(grep -a 'wire_tamper\|pcmoe: error' "$TMP/w.out" | head -n 3)"; fi
    pkill -9 -f -- "run.dir=$d" 2>/dev/null
done
attack clear 100-100000000 300 flip x
if [ "$rc" -eq 0 ] && grep -q "wire_tamper: flipped" "$TMP/w.out" && ! same_losses "$TMP/plain/metrics.jsonl" "$d/metrics.jsonl" >/dev/null; then
    ok "without keys the same flip in the rows is accepted silently: exit 0, $(same_losses "$TMP/plain/metrics.jsonl" "$d/metrics.jsonl")"
else fail "without keys: exit $rc: $(grep -a 'wire_tamper\|error' "$TMP/w.out" | head -n 2)"; fi

# 5. fedavg; the CUDA backend, emulated
mpi 3 train "$TMP/p3.ini" --set parties.mode=fedavg --set fedavg.every=5 --set run.dir="$TMP/fa" >/dev/null 2>&1 \
    && mpi 3 train "$TMP/p3.ini" --set parties.mode=fedavg --set fedavg.every=5 --set run.dir="$TMP/fa_keyed" $keys >"$TMP/out" 2>&1 \
    && "$PYTHON" - "$TMP/fa/metrics.jsonl" "$TMP/fa_keyed/metrics.jsonl" <<'EOF' >"$TMP/fa.out" 2>&1 && ok "fedavg with keys: $(cat "$TMP/fa.out")" || fail "fedavg with keys: $(cat "$TMP/fa.out"; grep error "$TMP/out")"
import json, sys
a, b = [{(o["step"], o["party"]): o.get("train_loss") for o in map(json.loads, open(p))} for p in sys.argv[1:]]
worst = max(abs(a[k] - b[k]) / abs(a[k]) for k in a if a[k] is not None)
print(f"{len(a)} losses within {worst:.1e} relative of the run without (the average summed in party order)")
sys.exit(worst > 1e-5)
EOF
EMU="$top_builddir/tests/pcmoe_emu"
if [ -x "$EMU" ]; then
    cuda="--set run.device=cuda --set train.steps=6 --set train.warmup_steps=2"
    timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p3.ini" $cuda --set run.dir="$TMP/cu" >"$TMP/out" 2>&1 \
        && timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p3.ini" $cuda --set run.dir="$TMP/cu_keyed" $keys >"$TMP/out" 2>&1 \
        && out=$(same_losses "$TMP/cu/metrics.jsonl" "$TMP/cu_keyed/metrics.jsonl") && ok "cuda (emulated), staged rows sealed: $out" \
        || fail "cuda with keys: $(grep error "$TMP/out" | head -n 2) $out"
    expect_error "cuda: the direct path with keys" "run.cuda_aware_mpi = on hands device buffers to MPI, unsealed" \
        timeout 300 "$MPIRUN" --oversubscribe -np 3 -x OMP_NUM_THREADS=1 "$EMU" train "$TMP/p3.ini" $cuda --set run.cuda_aware_mpi=on --set run.dir="$TMP/cu_direct" $keys
else echo "note: no tests/pcmoe_emu (configure --enable-cuda-emulation): the CUDA cases skipped"; fi
finish
