#!/bin/sh
# Validation-loss curves of benchmarks/demo_table.sh's runs, one panel per party, one curve per mode:
# against training steps of the party (runs/demo_table/val_vs_step.png) and against training tokens
# of the whole job (runs/demo_table/val_vs_tokens.png). Needs gnuplot (apt-get install gnuplot-nox).
set -eu
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-runs}/demo_table
command -v gnuplot >/dev/null || { echo "needs gnuplot: apt-get install gnuplot-nox" >&2; exit 2; }
[ -f "$out/centralized/metrics.jsonl" ] || { echo "run benchmarks/demo_table.sh first" >&2; exit 2; }
modes="centralized pcmoe_concurrent pcmoe_sequential local fedavg"
# one data file per (mode, party): step, job tokens, val_loss
python3 - "$out" $modes <<'PY'
import json, os, sys
out, modes = sys.argv[1], sys.argv[2:]
for mode in modes:
    cfg = open(os.path.join(out, mode, "config.ini")).read()
    get = lambda k: int([l.split("=")[1] for l in cfg.splitlines() if l.startswith(k + " =")][0])
    B, T, P = get("batch_size"), get("seq_len"), get("count")
    per_step = B * T * (1 if "schedule = sequential" in cfg and "mode = pcmoe" in cfg else P)
    rows = {}
    for line in open(os.path.join(out, mode, "metrics.jsonl")):
        o = json.loads(line)
        if o.get("val_loss") is not None:
            rows.setdefault(o["party"], []).append((o["step"], o["step"] * per_step, o["val_loss"]))
    for p, r in rows.items():
        with open(os.path.join(out, f"{mode}.party{p}.dat"), "w") as f:
            for step, tok, v in r:
                f.write(f"{step} {tok} {v}\n")
PY
for x in step tokens; do
    col=1; label="training step"
    [ "$x" = tokens ] && col=2 && label="training tokens (all parties)"
    {
        echo "set terminal pngcairo size 1400,900 font ',10' noenhanced; set output '$out/val_vs_$x.png'"
        echo "set multiplot layout 2,2 title 'validation loss per party (demo, 4 parties): one curve per mode'"
        echo "set ylabel 'val loss (nats/byte)'; set xlabel '$label'; set grid; set key top right; set yrange [1.5:3.5]"
        for p in 0 1 2 3; do
            name=$(echo "shakespeare austen grimm sqlite3_h" | cut -d' ' -f$((p + 1)))
            printf "set title 'party %d (%s)'; plot " "$p" "$name"
            sep=""
            for m in $modes; do printf "%s'%s/%s.party%d.dat' using %d:3 with linespoints title '%s'" "$sep" "$out" "$m" "$p" "$col" "$m"; sep=", "; done
            echo
        done
        echo "unset multiplot"
    } | gnuplot
    echo "wrote $out/val_vs_$x.png"
done
