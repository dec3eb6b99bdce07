#!/bin/sh
# test_gpu_bench: benchmarks/gpu.sh end to end, on the emulated CUDA backend (tests/pcmoe_emu as pcmoe,
# benchmarks/gpu_gemm_emu as gpu_gemm) at its dry-run shapes (GPU_BENCH_DRY=1), with a stand-in nvidia-smi, and
# with the PyTorch rows on the CPU where the test tools' torch is: the script the GPU kit runs once on a borrowed
# GPU must print every part and judge every goal. The numbers mean nothing here; what is checked is that the
# tables come from the runs (the goals' ratio and ms a step equal the table rows they are made of) and that the
# expert memory splits (N = 2 parties hold less than one party alone). Then PyTorch steps that fail: the script
# says which parts failed and exits 1, and what did not fail (the pcmoe rows, the memory table) still prints.
. "$(dirname "$0")/lib.sh"
emu="$top_builddir/tests/pcmoe_emu" gemm="$top_builddir/benchmarks/gpu_gemm_emu"
[ -x "$emu" ] && [ -x "$gemm" ] ||
    { echo "SKIP: not built with the CUDA emulation (configure --enable-cuda-emulation)"; exit 77; }
mkdir -p "$TMP/bin"
printf '#!/bin/sh\ncase "$*" in -L) echo "GPU 0: emulated (UUID: none)" ;; *) echo "emulated" ;; esac\n' \
    >"$TMP/bin/nvidia-smi"
# the benchmark's Python: torch's CUDA steps run on the CPU (its device argument cuda becomes cpu); without torch
# here, one that has no CUDA (no PyTorch rows)
py=$(torch_python) || py=""
if [ -n "$py" ]; then
    {
        echo '#!/bin/sh'
        echo 'case "$*" in *cuda.is_available*) exit 0 ;; esac'
        echo 'for a in "$@"; do [ "$a" = cuda ] && a=cpu; set -- "$@" "$a"; shift; done'
        echo "exec $py \"\$@\""
    } >"$TMP/bin/python"
else printf '#!/bin/sh\nexit 1\n' >"$TMP/bin/python"; fi
# the planted one: every PyTorch step fails
printf '#!/bin/sh\ncase "$*" in *cuda.is_available*) exit 0 ;; *torch_step*) echo "planted" >&2; exit 3 ;; esac\n' \
    >"$TMP/bin/python-bad"
chmod +x "$TMP/bin/nvidia-smi" "$TMP/bin/python" "$TMP/bin/python-bad"

# bench NAME PYTHON: gpu.sh's dry run, 2 timed steps
bench() {
    env PATH="$TMP/bin:$PATH" PCMOE="$emu" GPU_GEMM="$gemm" TORCH_PYTHON="$2" BENCH_OUT="$TMP/$1" GPU_BENCH_DRY=1 \
        OMP_NUM_THREADS=1 timeout 600 sh "$top_srcdir/benchmarks/gpu.sh" 2 >"$TMP/$1.out" 2>"$TMP/$1.err"
}
bench good "$TMP/bin/python"
rc=$?
out="$TMP/good.out"
[ "$rc" -eq 0 ] && ok "gpu.sh (dry run, emulated): exit 0" || fail "gpu.sh: exit $rc: $(tail -n 20 "$TMP/good.err")"
grep -q '^gpu_gemm: every product checked' "$out" && ok "the GEMM part: $(grep -c 'TFLOP/s  error' "$out") ways checked" \
    || fail "no GEMM part: $(head -n 20 "$out")"
rows=$(grep -c '^pcmoe cuda, run.tf32 = \(true\|false\) ' "$out")
[ "$rows" -eq 4 ] && ok "pcmoe rows at both shapes and both precisions" || fail "pcmoe rows: $rows of 4: $(cat "$out")"
# the goals come from the rows: pcmoe / PyTorch at the large shape, ms a step at the medium shape. col SHAPE
# PREFIX K: the shape's first row that starts with PREFIX, its K-th number (1 tokens/s, 2 ms a step)
col() { awk -v s="$1" -v l="$2" -v k="$3" '/ shape, / { in_s = ($1 == s) } in_s && index($0, l) == 1 {
    print $(NF - 4 + k); exit }' "$out"; }
goal_value() { grep "^  $1" "$out" | awk '{ for (i = 1; i <= NF; i++) if ($i == "goal") { print $(i - 1) + 0; exit } }'; }
ms_row=$(col medium "pcmoe cuda, run.tf32 = true" 2) ms_goal=$(goal_value "medium shape: ms per step")
awk -v a="$ms_row" -v b="$ms_goal" 'BEGIN { exit !(a > 0 && (a - b) ^ 2 < 1e-4 * a * a) }' \
    && ok "the medium goal's ms a step ($ms_goal) is the table's ($ms_row)" \
    || fail "medium ms a step: goal $ms_goal, table $ms_row"
if [ -n "$py" ]; then
    a=$(col large "pcmoe cuda, run.tf32 = true" 1) b=$(col large "PyTorch" 1) r=$(goal_value "large shape: pcmoe / PyTorch")
    awk -v a="$a" -v b="$b" -v r="$r" 'BEGIN { exit !(b > 0 && (a / b - r) ^ 2 < 4e-4 * r * r + 1e-4) }' \
        && ok "the large goal's ratio ($r) is the table's tokens/s, $a / $b" || fail "large ratio: goal $r, table $a / $b"
elif [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ]; then fail "no Python with torch for the PyTorch rows"
else echo "note: no torch here: the PyTorch rows and the ratio are not checked"; fi
n=$(grep -c '  goal [<>]=.*  \(met\|MISSED\)$' "$out")
m=$([ -n "$py" ] && echo 3 || echo 2)
[ "$n" -eq "$m" ] && ok "$n goals judged, met or missed" || fail "goals judged: $n of $m: $(sed -n '/^goals/,$p' "$out")"
half=$(awk '$1 == 2 && $NF ~ /x$/ { print $NF + 0 }' "$out")
awk -v x="$half" 'BEGIN { exit !(x > 0 && x < 0.8) }' && ok "2 pcmoe parties each hold ${half}x of a party alone" \
    || fail "memory at N = 2: ratio '$half': $(sed -n '/peak device memory/,/^$/p' "$out")"

bench bad "$TMP/bin/python-bad"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'gpu.sh: failed: large medium' "$TMP/bad.err" && grep -q '^2 ' "$TMP/bad.out" &&
    [ "$(grep -c '^pcmoe cuda, run.tf32 = ' "$TMP/bad.out")" -eq 4 ] &&
    grep -q 'medium shape: ms per step .* \(met\|MISSED\)$' "$TMP/bad.out"; then
    ok "failing PyTorch steps: exit 1, '$(grep 'failed:' "$TMP/bad.err")'; the pcmoe rows, the memory table" \
        "and the ms goal still printed"
else fail "failing PyTorch steps: exit $rc: $(cat "$TMP/bad.err") $(tail -n 8 "$TMP/bad.out")"; fi
finish
