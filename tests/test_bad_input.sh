#!/bin/sh
# test_bad_input: a table of bad inputs (configs, corpora, checkpoints, misbehaving peers, command
# lines). Each must end every rank within a timeout with a non-zero status, exactly one
# "pcmoe: error:" line naming the culprit, no core dump or crash, no sanitizer report, and leave every
# existing checkpoint file unchanged (checksums before and after).
. "$(dirname "$0")/lib.sh"

if [ -z "$H5PY_PYTHON" ]; then
    [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no python3 with h5py (apt-get install python3-h5py)"; finish; }
    echo "SKIP: no python3 with h5py (apt-get install python3-h5py)"; exit 77
fi
tiny_config 2 "$TMP/p2.ini"
cfg="$TMP/p2.ini"
good="$TMP/good" # a finished run with complete checkpoints at steps 10 and 20
mpi 2 train "$cfg" --set checkpoint.every=10 --set run.dir="$good" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "baseline run failed"; finish; }
sums() { find "$1" -name '*.h5' -o -name COMPLETE | sort | xargs cat | cksum; }
good_sum=$(sums "$good")

N=0
# expect NAME SUBSTRING COMMAND...: COMMAND fails cleanly with one error line containing SUBSTRING
expect() {
    name=$1 want=$2
    shift 2
    N=$((N + 1))
    if [ "$1" = mpi ]; then "$@" >"$TMP/out" 2>&1; else timeout 120 "$@" >"$TMP/out" 2>&1; fi
    rc=$?
    n_err=$(grep -c "pcmoe: error:" "$TMP/out")
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail "$name: exit status $rc (want a clean failure)"
    elif grep -qiE "core dumped|segmentation fault|runtime error:|AddressSanitizer|LeakSanitizer|Signal: " "$TMP/out"; then fail "$name: crashed: $(head -c 600 "$TMP/out")"
    elif [ "$n_err" -ne 1 ]; then fail "$name: $n_err error lines: $(grep "pcmoe: error" "$TMP/out")"
    elif ! grep "pcmoe: error:" "$TMP/out" | grep -qF -- "$want"; then fail "$name: error lacks '$want': $(grep "pcmoe: error" "$TMP/out")"
    else ok "$name (exit $rc): $(grep "pcmoe: error:" "$TMP/out" | cut -c1-160)"
    fi
}
# a copy of the good run with its newest checkpoint's party 1 file changed by `mutate OP`
mutated() {
    d="$TMP/ck_$1"
    cp -r "$good" "$d"
    f="$d/checkpoints/step_00000020/party_1.h5"
    case $1 in
    truncated) head -c 4000 "$f" > "$f.cut" && mv "$f.cut" "$f" ;;
    not_hdf5) printf 'this is not a checkpoint\n' > "$f" ;;
    swapped) mv "$f" "$d/x" && cp "$d/checkpoints/step_00000020/party_0.h5" "$f" ;;
    no_markers) rm "$d"/checkpoints/*/COMPLETE ;;
    *) "$H5PY_PYTHON" - "$f" "$1" <<'PY' ;;
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r+")
op = sys.argv[2]
if op == "wrong_shape":
    del f["backbone/embed"]; f.create_dataset("backbone/embed", data=np.zeros((255, 32), np.float32))
elif op == "missing_dataset":
    del f["experts/layer_1/expert_1/w_up"]
elif op == "missing_optim":
    del f["optim/adam_v/backbone/lm_head"]
elif op == "wrong_type":
    del f["backbone/final_norm"]; f.create_dataset("backbone/final_norm", data=np.zeros(32, np.float64))
elif op == "wrong_parties":
    f["meta"].attrs.modify("n_parties", np.int32(3))
elif op == "wrong_version":
    f["meta"].attrs.modify("format_version", np.int32(99))
elif op == "nan_weights":
    f["backbone/embed"][0, 0] = np.nan
elif op == "bad_stored_config":
    f["meta"].attrs.modify("config", np.bytes_(b"[model]\nd_model = banana\n"))
elif op == "no_meta":
    del f["meta"]
f.close()
PY
    esac
    # a changed file gets checksums that match (tests/reference/ckpt_checksum.py), so the checks behind them are
    # what refuses it; damage itself is tests/test_checksums.sh's
    case $1 in truncated|not_hdf5|swapped|no_markers|no_meta) ;;
    *) "$H5PY_PYTHON" "$top_srcdir/tests/reference/ckpt_checksum.py" seal "$f" >/dev/null ;; esac
    echo "$d"
}
# resume_case NAME SUBSTRING OP [extra --set ...]: resuming the mutated copy fails and changes no file
resume_case() {
    name=$1 want=$2 op=$3
    shift 3
    d=$(mutated "$op")
    before=$(sums "$d")
    expect "checkpoint: $name" "$want" mpi 2 train "$cfg" --set checkpoint.every=10 --set run.dir="$d" --resume "$@"
    [ "$(sums "$d")" = "$before" ] || fail "checkpoint: $name: a checkpoint file changed"
}

# --- configs
printf '[model]\nd_modle = 32\n' > "$TMP/unknown.ini"
expect "config: unknown key" "unknown key model.d_modle" "$PCMOE" train "$TMP/unknown.ini"
expect "config: bad type" "model.d_model = 'x32': not an integer" "$PCMOE" train "$cfg" --set model.d_model=x32
expect "config: out of range" "train.lr = 50: out of range" "$PCMOE" train "$cfg" --set train.lr=50
expect "config: inconsistent dims" "model.n_heads = 5: must divide model.d_model = 32" "$PCMOE" train "$cfg" --set model.n_heads=5
expect "config: kv heads not dividing" "model.n_kv_heads = 3: must divide model.n_heads = 4" "$PCMOE" train "$cfg" --set model.n_heads=4 --set model.n_kv_heads=3
expect "config: odd head_dim" "model.head_dim = 7: must be even (RoPE)" "$PCMOE" train "$cfg" --set model.head_dim=7
expect "config: bad qk_norm" "model.qk_norm = 'both': not one of none, full, head" "$PCMOE" train "$cfg" --set model.qk_norm=both
expect "config: top_k > n_experts" "model.top_k = 7: must be <= model.n_experts = 6" "$PCMOE" train "$cfg" --set model.top_k=7
expect "config: bad enum" "parties.mode = 'federated': not one of pcmoe, centralized, local, fedavg" "$PCMOE" train "$cfg" --set parties.mode=federated
expect "config: bad bool" "privacy.check_finite = 'maybe': not a boolean" "$PCMOE" train "$cfg" --set privacy.check_finite=maybe
expect "config: more parties than experts" "parties.count = 8: must be <= model.n_experts = 6" "$PCMOE" train "$cfg" --set parties.count=8
expect "config: party without corpus" "data.2: missing: parties.count = 3 needs a corpus" "$PCMOE" train "$cfg" --set parties.count=3
expect "config: bad recompute_experts" "model.recompute_experts = 'sometimes': not one of auto, true, false" "$PCMOE" train "$cfg" --set model.recompute_experts=sometimes
expect "config: bad recompute_attention" "model.recompute_attention = 'yes': not one of auto, true, false" "$PCMOE" train "$cfg" --set model.recompute_attention=yes
# run.device = cuda without a usable backend: the plugin named, or the build's lack of CUDA, on every rank
if [ -f "$top_builddir/pcmoe_cuda.so" ]; then
    export PCMOE_CUDA_PLUGIN="$TMP/none.so" # (the ranks inherit mpirun's environment)
    expect "cuda: plugin missing" "cannot load $TMP/none.so" mpi 2 train "$cfg" --set run.device=cuda --set run.dir="$TMP/r"
    unset PCMOE_CUDA_PLUGIN
else
    expect "cuda: not built" "built without CUDA" mpi 2 "$PCMOE" train "$cfg" --set run.device=cuda --set run.dir="$TMP/r"
fi
expect "config: wrong party count for ranks" "parties.count = 2, parties.mode = pcmoe: needs 2 MPI ranks, the job has 3" mpi 3 train "$cfg" --set run.dir="$TMP/r"
# --- corpora
printf '' > "$TMP/empty.txt"
printf 'tiny\n' > "$TMP/short.txt"
head -c 5000 "$PCMOE" > "$TMP/binary.txt"
ln -s "$TMP/nowhere" "$TMP/dangling.txt"
mkdir -p "$TMP/nofiles/sub"
expect "data: missing" "party 1: data.1 = $TMP/missing.txt: cannot read corpus" mpi 2 train "$cfg" --set data.1="$TMP/missing.txt" --set run.dir="$TMP/r"
expect "data: empty" "corpus is empty" mpi 2 train "$cfg" --set data.0="$TMP/empty.txt" --set run.dir="$TMP/r"
expect "data: unreadable (dangling link)" "dangling.txt: cannot read corpus" mpi 2 train "$cfg" --set data.1="$TMP/dangling.txt" --set run.dir="$TMP/r"
expect "data: binary" "binary data (NUL byte at offset" mpi 2 train "$cfg" --set data.1="$TMP/binary.txt" --set run.dir="$TMP/r"
expect "data: shorter than seq_len" "too short for model.seq_len = 32" mpi 2 train "$cfg" --set data.0="$TMP/short.txt" --set run.dir="$TMP/r"
expect "data: directory without files" "holds no regular files" mpi 2 train "$cfg" --set data.1="$TMP/nofiles" --set run.dir="$TMP/r"
# --- checkpoints
resume_case "truncated file" "party_1.h5: cannot open as HDF5 (truncated or corrupt checkpoint?)" truncated
resume_case "not HDF5" "party_1.h5: not an HDF5 file" not_hdf5
resume_case "wrong shape" "dataset /backbone/embed has shape 255x32 (or the wrong type), expected 256x32" wrong_shape
resume_case "missing expert dataset" "missing dataset /experts/layer_1/expert_1/w_up" missing_dataset
resume_case "missing optimizer dataset" "missing dataset /optim/adam_v/backbone/lm_head" missing_optim
resume_case "wrong dtype" "/backbone/final_norm has shape 32 (or the wrong type)" wrong_type
resume_case "wrong party count" "written by a run of 3 parties, config has parties.count = 2" wrong_parties
resume_case "format version" "checkpoint format version 99" wrong_version
resume_case "NaN weights" "/backbone/embed holds NaN or Inf" nan_weights
resume_case "unreadable stored config" "stored config unreadable" bad_stored_config
resume_case "no /meta" "missing group /meta" no_meta
resume_case "another party's file" "holds party 0, expected party 1" swapped
resume_case "other model" "another model: model.d_model: checkpoint 32, config 64" none --set model.d_model=64
resume_case "other mode" "written in parties.mode = pcmoe, config has fedavg" none --set parties.mode=fedavg
resume_case "no complete checkpoint" "no complete checkpoint to resume from; incomplete: step_00000020, step_00000010" no_markers
expect "checkpoint: eval of an incomplete directory" "not a complete checkpoint directory" mpi 2 eval "$cfg" --checkpoint "$TMP/ck_no_markers/checkpoints/step_00000020"
expect "checkpoint: existing run without --resume" "already holds a run" mpi 2 train "$cfg" --set run.dir="$good"
# --- misbehaving peers (party 1 misbehaves; party 0 names it and stops the job)
expect "peer: out-of-range counts" "party 1 announced" mpi 2 train "$cfg" --inject-fault counts --set run.dir="$TMP/f1"
expect "peer: foreign expert id" "party 1 sent rows for expert 1, which is not this party's" mpi 2 train "$cfg" --inject-fault foreign --set run.dir="$TMP/f2"
expect "peer: NaN rows" "party 1 sent a non-finite value (nan) in expert_rows" mpi 2 train "$cfg" --inject-fault nan --set run.dir="$TMP/f3"
expect "training: NaN gradient" "step 6, party 1: non-finite backbone gradient; stopping" mpi 2 train "$cfg" --inject-fault nan-grad \
    --set checkpoint.every=2 --set run.dir="$TMP/f4"
[ -f "$TMP/f4/checkpoints/step_00000004/COMPLETE" ] && [ ! -d "$TMP/f4/checkpoints/step_00000006" ] \
    && "$PCMOE" info "$TMP/f4/checkpoints/step_00000004" >/dev/null 2>&1 && ok "the last good checkpoint (step 4) is intact and loads" \
    || fail "after the NaN gradient: checkpoint state $(ls "$TMP/f4/checkpoints" 2>&1)"
# --- command line
expect "cli: --resume with --force" "--resume and --force exclude each other" "$PCMOE" train "$cfg" --resume --force
expect "cli: --stop-after 0" "--stop-after 0: not a step number" "$PCMOE" train "$cfg" --stop-after 0

[ "$(sums "$good")" = "$good_sum" ] && ok "the baseline run's checkpoints are unchanged" || fail "a baseline checkpoint file changed"
[ "$N" -ge 30 ] && ok "$N bad-input cases" || fail "only $N cases"
finish
