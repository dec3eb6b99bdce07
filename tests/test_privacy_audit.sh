#!/bin/sh
# test_privacy_audit: what crosses party boundaries, from pcmoe's own traffic audit (--audit).
#  - pcmoe sends only expert rows, expert outputs, the two gradient kinds, routing counts, scalar
#    metrics, and one-int start-up agreements (control), plus the audit report itself: never fedavg
#    weights or anything else. There is no message kind for token ids, labels, gate weights or backbone
#    tensors; the audit proves nothing else was sent through the audited functions.
#  - Row bytes equal routed-remote-rows x d_model x 4 per direction and peer. The row counts come from
#    the routers of the senders, counted apart from the byte counters; outputs mirror rows; the two
#    gradient kinds mirror each other.
#  - privacy.share_metrics = false: no metrics traffic at all, each party writes its own metrics file.
#  - fedavg shows its full-model traffic.
. "$(dirname "$0")/lib.sh"

check_audit() { # check_audit AUDIT.json MODE D_MODEL N_PARAMS FEDAVG_ROUNDS SHARE_METRICS
    "$PYTHON" - "$@" <<'PY'
import json, sys
audit, mode, d = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
n_params, rounds, share = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
P = audit["n_parties"]
ranks = audit["ranks"]
allowed = {"pcmoe": {"routing_counts", "expert_rows", "expert_outputs", "output_grads", "input_grads", "metrics", "control", "audit"},
           "fedavg": {"fedavg_weights", "metrics", "control", "audit"}}[mode]
if not share:
    allowed -= {"metrics"}
errors = []
for r in ranks:
    for way in ("sent", "recv"):
        for kind, t in r[way].items():
            if t["total"] and kind not in allowed:
                errors.append(f"rank {r['rank']} {way} {t['total']} bytes of {kind}")
for r in ranks:
    me = r["party"]
    for p in range(P):
        if p == me:
            if r["sent"]["expert_rows"]["per_party"][p] or r["rows_routed_to"][p]:
                errors.append(f"party {me} sent rows to itself")
            continue
        rows = r["rows_routed_to"][p]
        sent_rows = r["sent"]["expert_rows"]["per_party"][p]
        if sent_rows != rows * d * 4:
            errors.append(f"party {me} -> {p}: {sent_rows} row bytes, routing says {rows} rows x {d} x 4 = {rows * d * 4}")
        if r["recv"]["expert_outputs"]["per_party"][p] != sent_rows:
            errors.append(f"party {me} <- {p}: outputs {r['recv']['expert_outputs']['per_party'][p]} != rows {sent_rows}")
        if ranks[p]["recv"]["expert_rows"]["per_party"][me] != sent_rows:
            errors.append(f"party {p} received {ranks[p]['recv']['expert_rows']['per_party'][me]} row bytes from {me}, {me} sent {sent_rows}")
        og, ig = r["sent"]["output_grads"]["per_party"][p], r["recv"]["input_grads"]["per_party"][p]
        if og != ig or og % (d * 4) or og > sent_rows:
            errors.append(f"party {me} <-> {p}: output grads {og}, input grads {ig}, rows {sent_rows}")
    if mode == "pcmoe" and r["sent"]["fedavg_weights"]["total"]:
        errors.append("pcmoe sent fedavg weights")
    if mode == "fedavg":
        fw = r["sent"]["fedavg_weights"]["total"]
        if fw != rounds * n_params * 4:
            errors.append(f"fedavg: {fw} weight bytes, want {rounds} rounds x {n_params} params x 4 = {rounds * n_params * 4}")
    if not share and (r["sent"]["metrics"]["total"] or r["recv"]["metrics"]["total"]):
        errors.append(f"rank {r['rank']}: metrics traffic with share_metrics = false")
routed = sum(sum(r["rows_routed_to"]) for r in ranks)
if mode == "pcmoe" and routed == 0:
    errors.append("no rows were routed to remote experts at all")
print(f"{mode}: {P} parties, {routed:.0f} remote rows routed, "
      f"{sum(r['sent']['expert_rows']['total'] for r in ranks):.0f} row bytes")
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
PY
}

for n in 2 4; do
    for sched in concurrent sequential; do
        cfg="$TMP/p$n.ini"
        tiny_config "$n" "$cfg" "$sched"
        mpi "$n" train "$cfg" --set run.dir="$TMP/r$n$sched" --audit "$TMP/a$n$sched.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "run $n $sched failed"; continue; }
        check_audit "$TMP/a$n$sched.json" pcmoe 32 0 0 1 && ok "pcmoe, $n parties, $sched: only expert traffic, bytes match routing" || fail "pcmoe audit, $n parties, $sched"
    done
done

# metrics kept local
tiny_config 2 "$TMP/p2.ini"
mpi 2 train "$TMP/p2.ini" --set privacy.share_metrics=false --set run.dir="$TMP/local_metrics" --audit "$TMP/a_nm.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "share_metrics=false run failed"; }
check_audit "$TMP/a_nm.json" pcmoe 32 0 0 0 && ok "share_metrics = false: no metrics traffic" || fail "share_metrics = false audit"
for p in 0 1; do
    [ -s "$TMP/local_metrics/metrics.party_$p.jsonl" ] && ok "party $p wrote its own metrics" || fail "no metrics.party_$p.jsonl"
    grep -q "\"party\":$((1 - p))" "$TMP/local_metrics/metrics.party_$p.jsonl" && fail "party $p's file holds the other party's metrics"
done

# fedavg: every weight crosses, steps / fedavg.every times
mpi 2 train "$TMP/p2.ini" --set parties.mode=fedavg --set fedavg.every=5 --set run.dir="$TMP/fedavg" --audit "$TMP/a_fa.json" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "fedavg run failed"; }
params=$(grep -o '"params":[0-9]*' "$TMP/fedavg/summary.json" | head -n 1 | cut -d: -f2)
check_audit "$TMP/a_fa.json" fedavg 32 "$params" 4 1 && ok "fedavg: full-model traffic, 4 rounds x $params params" || fail "fedavg audit"
finish
