#!/bin/sh
# test_multihost: pcmoe across two "hosts" over real TCP. The test creates two network namespaces of its
# own joined by a veth pair (addresses 10.213.<pid>.1 and .2, made here and removed at the end), runs
# mpirun in the first with a hostfile naming both, Open MPI's rsh agent set to an `ip netns exec`
# wrapper, and TCP as the only transport. The per-party losses must equal the single-host run's, and
# the veth link must have carried the expert traffic; the same for 2 parties of 2 ranks, a party per host,
# whose traffic inside a party stays on its host; the parties as jobs of their own, one per host, meeting
# through an ompi-server (pcmoe train --party P --connect NAME); and when the link goes down mid-run, every pcmoe process
# ends within parties.peer_timeout, naming the silent party. Skips (77) only where namespaces cannot be made.
. "$(dirname "$0")/lib.sh"

tag=$(( $$ % 200 + 20 ))
na=pcmoe$$a nb=pcmoe$$b
ipa=10.213.$tag.1 ipb=10.213.$tag.2
cleanup() { ip netns del "$na" 2>/dev/null; ip netns del "$nb" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
if ! ip netns add "$na" 2>/dev/null; then echo "SKIP: cannot create network namespaces here (needs root and ip netns)"; exit 77; fi
ip netns add "$nb" && ip link add "v$$a" type veth peer name "v$$b" && ip link set "v$$a" netns "$na" && ip link set "v$$b" netns "$nb" \
    && ip -n "$na" addr add "$ipa/24" dev "v$$a" && ip -n "$nb" addr add "$ipb/24" dev "v$$b" \
    && ip -n "$na" link set "v$$a" up && ip -n "$nb" link set "v$$b" up && ip -n "$na" link set lo up && ip -n "$nb" link set lo up \
    || { fail "could not set up the veth link between the namespaces"; finish; }
ok "hosts $ipa ($na) and $ipb ($nb), joined by a veth pair"

# the rsh agent: "HOST COMMAND..." runs COMMAND inside HOST's namespace
cat > "$TMP/nsexec" <<EOF2
#!/bin/sh
host=\$1; shift
case \$host in $ipa) ns=$na ;; $ipb) ns=$nb ;; *) echo "nsexec: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" sh -c "\$*"
EOF2
chmod +x "$TMP/nsexec"
printf '%s slots=1\n%s slots=1\n' "$ipa" "$ipb" > "$TMP/hosts"
tiny_config 2 "$TMP/p2.ini"

mpi 2 train "$TMP/p2.ini" --set run.dir="$TMP/single" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "single-host run failed"; finish; }
before=$(ip netns exec "$na" cat "/sys/class/net/v$$a/statistics/tx_bytes")
ip netns exec "$na" timeout 120 "$MPIRUN" --hostfile "$TMP/hosts" -np 2 --map-by node \
    --mca plm_rsh_agent "$TMP/nsexec" --mca btl tcp,self --mca btl_tcp_if_include "10.213.$tag.0/24" \
    --mca oob_tcp_if_include "10.213.$tag.0/24" -x OMP_NUM_THREADS=1 -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$PCMOE" train "$TMP/p2.ini" --set run.dir="$TMP/multi" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "two-host run failed"; finish; }
after=$(ip netns exec "$na" cat "/sys/class/net/v$$a/statistics/tx_bytes")
[ $((after - before)) -gt 500000 ] && ok "the veth carried $((after - before)) bytes out of $na" || fail "only $((after - before)) bytes crossed the veth"
if same_losses "$TMP/single/metrics.jsonl" "$TMP/multi/metrics.jsonl"; then ok "two hosts over TCP: per-party losses identical to the single-host run"
else fail "two-host losses differ from the single-host run"
fi

# 2 parties x 2 ranks (parties.ranks_per_party = 2), one party per host: party 0's ranks on the first,
# party 1's on the second (the jobscripts' layout: --ntasks-per-node = ranks per party); the same losses as
# on one host, bit for bit, and the audit's crossing bytes (those of a party line) on the veth
printf '%s slots=2\n%s slots=2\n' "$ipa" "$ipb" > "$TMP/hosts2"
R2="--set parties.ranks_per_party=2 --set train.steps=10"
mpi 4 train "$TMP/p2.ini" $R2 --set run.dir="$TMP/single2" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "single-host 2 x 2 run failed"; finish; }
before=$(ip netns exec "$na" cat "/sys/class/net/v$$a/statistics/tx_bytes")
ip netns exec "$na" timeout 120 "$MPIRUN" --hostfile "$TMP/hosts2" -np 4 --map-by ppr:2:node \
    --mca plm_rsh_agent "$TMP/nsexec" --mca btl tcp,self --mca btl_tcp_if_include "10.213.$tag.0/24" \
    --mca oob_tcp_if_include "10.213.$tag.0/24" -x OMP_NUM_THREADS=1 -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$PCMOE" train "$TMP/p2.ini" $R2 --set run.dir="$TMP/multi2" --audit "$TMP/audit2.json" >"$TMP/out" 2>&1 \
    || { cat "$TMP/out"; fail "two-host 2 x 2 run failed"; finish; }
after=$(ip netns exec "$na" cat "/sys/class/net/v$$a/statistics/tx_bytes")
if out=$("$PYTHON" - "$TMP/single2/metrics.jsonl" "$TMP/multi2/metrics.jsonl" "$TMP/audit2.json" $((after - before)) <<'PY' 2>&1
import json, sys
def load(p):
    return {(o["step"], o["party"]): (o.get("train_loss"), o.get("val_loss")) for o in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in a if a[k] != b.get(k)]
ranks = json.load(open(sys.argv[3]))["ranks"]
across = sum(r["sent"][k]["total"] for r in ranks if r["party"] == 0 for k in r["sent"])
inside = sum(sum(r["intra_party"]["sent"].values()) for r in ranks if r["party"] == 0)
veth = int(sys.argv[4])
print(f"{len(a)} (step, party) entries, {len(bad)} differ; party 0 sent {across:.0f} bytes across, {inside:.0f} inside; "
      f"the veth carried {veth} out of its host")
sys.exit(1 if bad or set(a) != set(b) or not across <= veth < across + inside else 0)
PY
); then ok "2 parties x 2 ranks, a party per host: $out"; else fail "2 parties x 2 ranks on two hosts: $out"; fi

# each party its own job on its own host (--party P --connect NAME), meeting through an ompi-server on the
# first host: the single-host run's losses, bit for bit
if command -v ompi-server >/dev/null 2>&1; then
    ip netns exec "$na" ompi-server --no-daemonize --report-uri "$TMP/uri" >"$TMP/server.out" 2>&1 &
    server=$!
    i=0
    while [ "$i" -lt 100 ] && [ ! -s "$TMP/uri" ]; do sleep 0.1; i=$((i + 1)); done
    for p in 1 0; do
        host=$na
        [ "$p" = 1 ] && host=$nb
        ip netns exec "$host" timeout 120 "$MPIRUN" --ompi-server "file:$TMP/uri" -np 1 --mca btl tcp,self \
            --mca btl_tcp_if_include "10.213.$tag.0/24" --mca oob_tcp_if_include "10.213.$tag.0/24" -x OMP_NUM_THREADS=1 \
            "$PCMOE" train "$TMP/p2.ini" --party "$p" --connect hosts --set run.dir="$TMP/met" >"$TMP/met.$p.out" 2>&1 &
        eval "job$p=\$!"
    done
    wait "$job0"; rc0=$?
    wait "$job1"; rc1=$?
    kill "$server" 2>/dev/null
    if [ "$rc0" -eq 0 ] && [ "$rc1" -eq 0 ] && out=$(same_losses "$TMP/single/metrics.jsonl" "$TMP/met/metrics.jsonl" 2>&1); then ok "a job per host, met through ompi-server: the single-host losses ($out)"
    else fail "a job per host: exit $rc0, $rc1: $(grep -h error "$TMP"/met.*.out | head -n 3)"; fi
else
    fail "no ompi-server (Open MPI's name server)"
fi

# a link taken down: the second host's veth goes down after the first checkpoint. Every pcmoe process must end
# within parties.peer_timeout (4 s) + 8 s, the first host's naming party 1 as silent. (mpirun itself then
# waits for its daemon on the unreachable host: a launcher's wait, not pcmoe's; the test ends it.)
ip netns exec "$na" timeout 120 "$MPIRUN" --hostfile "$TMP/hosts" -np 2 --map-by node \
    --mca plm_rsh_agent "$TMP/nsexec" --mca btl tcp,self --mca btl_tcp_if_include "10.213.$tag.0/24" \
    --mca oob_tcp_if_include "10.213.$tag.0/24" -x OMP_NUM_THREADS=1 -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$PCMOE" train "$TMP/p2.ini" --set run.dir="$TMP/cut" --set train.steps=100000 --set parties.peer_timeout=4 \
    --set checkpoint.every=10 --set train.eval_every=0 >"$TMP/cut.out" 2>&1 &
job=$!
i=0
while [ "$i" -lt 300 ] && [ ! -f "$TMP/cut/checkpoints/step_00000010/COMPLETE" ]; do sleep 0.1; i=$((i + 1)); done
ip -n "$nb" link set "v$$b" down
# pcmoe_left: the pids of the cut run's pcmoe processes (in either namespace)
pcmoe_left() { for p in $(pgrep -f -- "run.dir=$TMP/cut"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = pcmoe ] && echo "$p"; done; }
start=$(date +%s)
i=0
while [ "$i" -lt 120 ] && [ -n "$(pcmoe_left)" ]; do sleep 0.1; i=$((i + 1)); done
secs=$(( $(date +%s) - start ))
left=$(pcmoe_left | wc -l)
if [ "$left" -eq 0 ] && [ "$secs" -le 12 ] && grep -q "party 1 (rank 1): silent for 4 s" "$TMP/cut.out"; then
    ok "the link cut: every pcmoe process ended in ${secs}s: $(grep 'pcmoe: error' "$TMP/cut.out" | head -n 1 | cut -c1-120)"
else
    fail "the link cut: $left pcmoe processes after ${secs}s; $(grep -a error "$TMP/cut.out" | head -n 2)"
fi
kill "$job" 2>/dev/null
pkill -9 -f -- "run.dir=$TMP/cut" 2>/dev/null
wait "$job" 2>/dev/null
ip -n "$nb" link set "v$$b" up

# a deliberately broken launcher (it cannot reach the second host): the job must fail, not hang
printf '#!/bin/sh\necho "nsexec: host $1 unreachable" >&2\nexit 255\n' > "$TMP/broken"
chmod +x "$TMP/broken"
start=$(date +%s)
ip netns exec "$na" timeout 120 "$MPIRUN" --hostfile "$TMP/hosts" -np 2 --map-by node --mca plm_rsh_agent "$TMP/broken" \
    --mca btl tcp,self -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$PCMOE" train "$TMP/p2.ini" --set run.dir="$TMP/broken_run" >"$TMP/out" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ ! -f "$TMP/broken_run/summary.json" ] && ok "a broken launcher fails the job (status $rc, ${secs}s)" \
    || fail "a broken launcher did not fail the job (status $rc)"
finish
