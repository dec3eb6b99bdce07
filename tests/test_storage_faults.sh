#!/bin/sh
# test_storage_faults: a full file system while pcmoe writes any of its files ends the job cleanly. On a
# small tmpfs this test mounts itself, each file in turn meets a full disk: a checkpoint, metrics.jsonl,
# config.ini, summary.json, the --audit file and the attack-study records. Every case must give one
# `pcmoe: error:` line naming the file, exit status 1 on every rank, no crash (no signal, no HDF5
# shutdown fault), no leftover *.tmp and no partial file that looks complete; after the checkpoint case
# the earlier complete checkpoints still load. Skips (77) only where a tmpfs cannot be mounted.
. "$(dirname "$0")/lib.sh"

FS="$TMP/fs"
mkdir -p "$FS"
if ! mount -t tmpfs -o size=4m tmpfs "$FS" 2>"$TMP/mount.err"; then
    echo "SKIP: cannot mount a tmpfs here ($(cat "$TMP/mount.err")): run as root where mounting is allowed"
    exit 77
fi
trap 'umount "$FS" 2>/dev/null; umount "$FS.audit" 2>/dev/null; rm -rf "$TMP"' EXIT

# fresh_fs KIB: an empty tmpfs of KIB KiB at $FS
fresh_fs() { umount "$FS" && mount -t tmpfs -o size="$1"k tmpfs "$FS" || { fail "remount"; finish; }; }
# leave_free KIB: fills $FS so that KIB KiB stay free
leave_free() {
    avail=$(df -k --output=avail "$FS" | tail -n 1)
    [ "$avail" -gt "$1" ] && fallocate -l $(( (avail - $1) * 1024 )) "$FS/filler"
    [ "$(df -k --output=avail "$FS" | tail -n 1)" -eq "$1" ] || { fail "could not leave $1 KiB free on $FS"; finish; }
}

# run NAME ARGS...: pcmoe on 2 ranks; each rank's exit status goes to $TMP/NAME.rc.RANK, output to $TMP/NAME.out
run() {
    name=$1
    shift
    rm -f "$TMP/$name".rc.*
    timeout 120 "$MPIRUN" --oversubscribe -np 2 -x OMP_NUM_THREADS=1 sh -c \
        '"$0" "$@"; echo $? > "'"$TMP/$name"'.rc.$OMPI_COMM_WORLD_RANK"' "$PCMOE" "$@" >"$TMP/$name.out" 2>&1
}

# expect_clean NAME FILE_PATTERN: one error line naming FILE_PATTERN, exit 1 on both ranks, no crash
expect_clean() {
    name=$1
    errs=$(grep -c '^pcmoe: error:' "$TMP/$name.out")
    if [ "$errs" -ne 1 ] || ! grep '^pcmoe: error:' "$TMP/$name.out" | grep -q "$2"; then
        fail "$name: expected one error line naming $2, got: $(grep -v '^step' "$TMP/$name.out" | head -n 20)"
    elif grep -Eqi 'segmentation|signal [0-9]|core dumped|AddressSanitizer|runtime error|HDF5-DIAG' "$TMP/$name.out"; then
        fail "$name: crashed: $(head -n 20 "$TMP/$name.out")"
    elif [ "$(cat "$TMP/$name".rc.0 2>/dev/null)" != 1 ] || [ "$(cat "$TMP/$name".rc.1 2>/dev/null)" != 1 ]; then
        fail "$name: exit status per rank: $(cat "$TMP/$name".rc.0 2>/dev/null || echo none) $(cat "$TMP/$name".rc.1 2>/dev/null || echo none), want 1 1"
    elif [ -n "$(find "$FS" -name '*.tmp')" ]; then
        fail "$name: temporary files left: $(find "$FS" -name '*.tmp')"
    else
        ok "$name: $(grep '^pcmoe: error:' "$TMP/$name.out")"
    fi
}

tiny_config 2 "$TMP/t.ini"

# 1. a checkpoint meets a full disk: steps 5 and 10 fit (2 x 0.57 MiB each), step 15 does not
fresh_fs 3072
run ckpt train "$TMP/t.ini" --set run.dir="$FS/r" --set checkpoint.every=5 --set checkpoint.keep=5
expect_clean ckpt "checkpoint of step 15 not written: .*party_[01].h5.tmp: cannot write: No space left"
[ -e "$FS/r/checkpoints/step_00000015" ] && fail "ckpt: the failed step's directory is left: $(ls -la "$FS/r/checkpoints/step_00000015")"
for s in 00000005 00000010; do
    d="$FS/r/checkpoints/step_$s"
    if [ -f "$d/COMPLETE" ] && "$PCMOE" info "$d" >"$TMP/info" 2>&1; then ok "ckpt: step $s still complete and valid"
    else fail "ckpt: step $s: $(cat "$TMP/info")"; fi
done
rm -f "$FS/filler"
run ckpt_eval eval "$TMP/t.ini" --set run.dir="$TMP/eval" --checkpoint "$FS/r/checkpoints/step_00000010"
if [ "$(cat "$TMP/ckpt_eval.rc.0")" = 0 ] && grep -q "party 1: val_loss .* step 10" "$TMP/ckpt_eval.out"; then ok "ckpt: step 10 loads (pcmoe eval)"
else fail "ckpt: pcmoe eval of step 10: $(cat "$TMP/ckpt_eval.out")"; fi
# the user frees space (the oldest checkpoint) and resumes: the run ends normally from step 10
rm -rf "$FS/r/checkpoints/step_00000005"
run ckpt_resume train "$TMP/t.ini" --set run.dir="$FS/r" --set checkpoint.every=5 --set checkpoint.keep=1 --resume
if [ "$(cat "$TMP/ckpt_resume.rc.0" 2>/dev/null)" = 0 ] && grep -q "resuming from .*step_00000010" "$TMP/ckpt_resume.out" &&
   [ -f "$FS/r/checkpoints/step_00000020/COMPLETE" ]; then ok "ckpt: resumed from step 10 to the end after space was freed"
else fail "ckpt: resume after freeing space: exit $(cat "$TMP/ckpt_resume.rc.0" 2>/dev/null): $(grep -v '^step' "$TMP/ckpt_resume.out" | head -n 20)"; fi

# 2. metrics.jsonl meets a full disk part-way: 12 KiB free, a line per party and step
fresh_fs 1024
mkdir -p "$FS/r"
leave_free 12
run metrics train "$TMP/t.ini" --set run.dir="$FS/r" --set checkpoint.every=0 --set train.steps=300 --set train.eval_every=0
expect_clean metrics "metrics.jsonl: cannot write: No space left"
if [ -s "$FS/r/metrics.jsonl" ] && [ "$(tail -c 1 "$FS/r/metrics.jsonl" | od -An -c | tr -d ' ')" = '\n' ] &&
   [ "$(grep -cv '^{"step":[0-9]*,"party":[01],.*}$' "$FS/r/metrics.jsonl")" -eq 0 ]; then
    ok "metrics: $(wc -l < "$FS/r/metrics.jsonl") complete lines kept, no partial line"
else
    fail "metrics: the file does not end with a complete line: $(tail -c 200 "$FS/r/metrics.jsonl")"
fi
[ -e "$FS/r/summary.json" ] && fail "metrics: summary.json written after a failed run"

# 3. config.ini meets a full disk at start-up
fresh_fs 1024
mkdir -p "$FS/r"
leave_free 0
run config train "$TMP/t.ini" --set run.dir="$FS/r"
expect_clean config "config.ini: cannot write: No space left"
[ -e "$FS/r/config.ini" ] && fail "config: a config.ini was left"

# 4. summary.json: room for config.ini and metrics.jsonl (one page each: only steps 0 and 20 are logged)
fresh_fs 1024
mkdir -p "$FS/r"
leave_free 8
run summary train "$TMP/t.ini" --set run.dir="$FS/r" --set checkpoint.every=0 --set train.log_every=1000 --set train.eval_every=0
expect_clean summary "summary.json: cannot write: No space left"
[ -e "$FS/r/summary.json" ] && fail "summary: a summary.json was left"
grep -q '"step":20,"party":1' "$FS/r/metrics.jsonl" && ok "summary: metrics.jsonl complete up to step 20"

# 5. the --audit file on a full file system of its own
fresh_fs 1024
mkdir -p "$FS.audit"
mount -t tmpfs -o size=64k tmpfs "$FS.audit" || { fail "mount"; finish; }
fallocate -l $(( $(df -k --output=avail "$FS.audit" | tail -n 1) * 1024 )) "$FS.audit/filler"
run audit train "$TMP/t.ini" --set run.dir="$FS/r" --set checkpoint.every=0 --audit "$FS.audit/audit.json"
expect_clean audit "audit.json: cannot write: No space left"
[ -e "$FS.audit/audit.json" ] || [ -e "$FS.audit/audit.json.tmp" ] && fail "audit: a partial audit file was left"
umount "$FS.audit"

# 6. the attack-study records (privacy.record_received) fill the disk part-way through the run
fresh_fs 1024
run records train "$TMP/t.ini" --set run.dir="$TMP/r6" --set checkpoint.every=0 --set train.steps=200 \
    --set privacy.record_received="$FS/rec"
expect_clean records "privacy.record_received: .*_party_[01].bin: cannot write: No space left"
# what is left holds whole blocks only, and received rows and true bytes still pair up block for block
if [ -n "$H5PY_PYTHON" ] || command -v python3 >/dev/null; then
    py=${H5PY_PYTHON:-python3}
    if "$py" - "$FS/rec" <<'EOF' >"$TMP/rec.check" 2>&1
import struct, sys, os
d = sys.argv[1]
def blocks(path, elem):
    out, data, i = [], open(path, "rb").read(), 0
    while i < len(data):
        if i + 16 > len(data): sys.exit(f"{path}: partial header at {i}")
        layer, peer, rows, width = struct.unpack("<4i", data[i:i + 16])
        i += 16 + rows * width * elem
        if i > len(data): sys.exit(f"{path}: partial block")
        out.append((layer, peer, rows))
    return out
rows = {p: blocks(f"{d}/received_party_{p}.bin", 4) for p in (0, 1)}
truth = {p: blocks(f"{d}/truth_party_{p}.bin", 1) for p in (0, 1)}
for owner in (0, 1):
    sender = 1 - owner
    got = [(l, r) for l, peer, r in rows[owner] if peer == sender]
    sent = [(l, r) for l, peer, r in truth[sender] if peer == owner]
    n = min(len(got), len(sent))
    if got[:n] != sent[:n]: sys.exit(f"owner {owner}: blocks do not pair up")
print(f"whole blocks: {[len(rows[p]) for p in (0, 1)]} received, {[len(truth[p]) for p in (0, 1)]} truth")
EOF
    then ok "records: $(cat "$TMP/rec.check")"; else fail "records: $(cat "$TMP/rec.check")"; fi
fi
finish
