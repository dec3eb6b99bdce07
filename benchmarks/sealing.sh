#!/bin/sh
# The sealed exchange's cost (parties.keys, docs/privacy.md "The network"): tokens/s of the same pcmoe run
# without keys and with, in the same session, at the demo shape (input/demo.ini, 4 parties) and the medium
# shape (d_model 256, 4 MoE layers of 8 experts, expert_ff 512, seq_len 128, batch 4; 2 parties), one
# OpenMP thread per rank. Per shape: the median tokens/s of each (after 3 warm-up steps), their ratio, the
# bytes that crossed party lines per step (the audit's payloads) and the 16-byte tags sealing added.
# usage: benchmarks/sealing.sh [STEPS]   (default 30; writes runs/sealing/, BENCH_OUT=DIR: DIR/sealing/)
set -eu
. "$(dirname "$0")/common.sh"
steps=${1:-30}
out=${BENCH_OUT:-runs}/sealing
mkdir -p "$out"
rm -rf "$out/keys"
mkdir -p "$out/keys"
for p in 0 1 2 3; do pcmoe_run "$out/keygen.log" "$PCMOE" keygen --party $p --out "$out/keys/party$p.key"; done
for p in 0 1 2 3; do for q in 0 1 2 3; do [ $p = $q ] || cat "$out/keys/party$q.key.pub" >>"$out/keys/party$p.key"; done; done
bench_config "$out/medium.ini" 2 256 4 4 128 8 512 4 "$steps"
sed -e "s/^steps = .*/steps = $steps/" -e 's/^eval_every = .*/eval_every = 0/' -e 's/^log_every = .*/log_every = 1/' \
    input/demo.ini > "$out/demo.ini"
printf '%-8s %7s %14s %14s %9s %14s %12s\n' shape parties "plain tok/s" "sealed tok/s" "sealed/plain" "payload B/step" "tags B/step"
for shape in demo medium; do
    n=$(sed -n 's/^count = //p' "$out/$shape.ini" | head -n 1)
    for run in plain sealed; do
        keys=""
        [ $run = sealed ] && keys="--set parties.keys=$out/keys/party{party}.key"
        pcmoe_run "$out/$shape-$run.log" "$mpirun" --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 "$PCMOE" train "$out/$shape.ini" \
            --force --set run.dir="$out/$shape-$run" --set checkpoint.every=0 --audit "$out/$shape-$run.audit" $keys
    done
    python3 - "$out/$shape-plain.audit" "$out/$shape-sealed.audit" "$steps" "$shape" "$n" \
        "$(median_tps "$out/$shape-plain")" "$(median_tps "$out/$shape-sealed")" <<'PY'
import json, sys
plain, sealed = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
steps, shape, n, tp, ts = int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
payload = sum(t["total"] for r in sealed["ranks"] for k, t in r["sent"].items() if k not in ("audit",)) / steps
tags = sum(sum(r["sealing_overhead"]["sent"].values()) for r in sealed["ranks"]) / steps
print(f"{shape:<8} {n:>7} {tp:>14.0f} {ts:>14.0f} {ts / tp:>12.3f} {payload:>14.0f} {tags:>12.0f}")
PY
done
echo "(tokens/s: all parties' tokens per second of a step, median after 3 warm-up steps; bytes: sent by all ranks)"
