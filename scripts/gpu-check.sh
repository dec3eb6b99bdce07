#!/bin/sh
# gpu-check.sh OUT [--cpu-only]: every GPU check of pcmoe, run from the GPU kit (scripts/gpu-kit.sh builds
# it; this file is its gpu-check.sh). It needs nothing from the machine but a POSIX shell, the C library, the
# CUDA driver and toolkit libraries (libcudart, libcublas), compute-sanitizer and a python3 with torch for the
# benchmark's PyTorch row. Writes at most 8 files into OUT and finishes within GPU_CHECK_SECONDS (480):
#   env.txt        the machine (nvidia-smi, kernel, where each library of pcmoe was found)
#   kernels.txt    tests/test_cuda_kernels_gpu: every kernel against the CPU's
#   parity.txt     tests/test_cuda_train_gpu.sh: training on cuda against cpu, 1 party, fedavg, --simulate,
#                  3 pcmoe parties under the kit's own mpirun on one GPU (staged; the kit's Open MPI has no
#                  CUDA support, so run.cuda_aware_mpi = on must be refused, and direct is not run)
#   sanitizer.txt  compute-sanitizer memcheck, racecheck, synccheck and initcheck on the kernel tests
#   bench.txt      benchmarks/gpu.sh: the GEMM peaks, the large and medium shapes against PyTorch eager, device
#                  memory per party, and the backend's goals, each met or missed
#   summary.txt    each step's exit status and seconds (0 pass, 124 timed out, else failed; a step that skips,
#                  77, fails too: on a GPU machine every check must run)
# --cpu-only (the kit's test on a machine without a GPU): env.txt, cpu.txt (3 parties over the kit's mpirun
# with a checkpoint, their losses against --simulate, pcmoe info, the starts of the kernel test and of
# gpu_gemm) and summary.txt.
set -u
KIT=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: gpu-check.sh OUT [--cpu-only]" >&2; exit 2; }
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
mode=${2:-gpu}

# Open MPI, relocated into the kit; only its shared-memory and TCP transports
export OPAL_PREFIX="$KIT/ompi" OPAL_EXEC_PREFIX="$KIT/ompi" OPAL_BINDIR="$KIT/ompi/bin" OPAL_LIBDIR="$KIT/lib" \
    OPAL_PKGLIBDIR="$KIT/lib/openmpi3" OPAL_DATAROOTDIR="$KIT/ompi/share" OPAL_DATADIR="$KIT/ompi/share" \
    OPAL_PKGDATADIR="$KIT/ompi/share/openmpi" OPAL_SYSCONFDIR="$KIT/ompi/etc"
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx \
    OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_mca_base_component_show_load_errors=0
export PATH="$KIT/ompi/bin:$PATH" MPIRUN="$KIT/ompi/bin/mpirun" PCMOE="$KIT/pcmoe" top_srcdir="$KIT" \
    top_builddir="$KIT" GPU_GEMM="$KIT/benchmarks/gpu_gemm"
py=$(command -v python3 || true)
[ -n "$py" ] && export TORCH_PYTHON="$py"
# the machine's CUDA libraries (pcmoe_cuda.so and the kernel test load libcudart and libcublas)
cuda=""
for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $([ -n "$py" ] && "$py" -c 'import os, nvidia; d = os.path.dirname(nvidia.__path__[0]); print(" ".join(os.path.join(d, "nvidia", k, "lib") for k in ("cuda_runtime", "cublas", "cu13")))' 2>/dev/null); do
    ls "$d"/libcublas.so* >/dev/null 2>&1 && cuda="$cuda${cuda:+:}$d"
done
[ -n "$cuda" ] && export LD_LIBRARY_PATH="$cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cpu_only() {
    cd "$KIT" || return 1
    d=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
    printf '[parties]\ncount = 3\n[model]\nd_model = 32\nn_layers = 2\nn_heads = 2\nseq_len = 32\nd_ff = 64\n' >"$d/p3.ini"
    printf 'n_experts = 6\ntop_k = 2\nexpert_ff = 32\n[train]\nsteps = 6\nbatch_size = 4\nwarmup_steps = 1\n' >>"$d/p3.ini"
    printf 'eval_every = 6\neval_batches = 1\nlog_every = 1\n[checkpoint]\nevery = 6\n[data]\n' >>"$d/p3.ini"
    printf '0 = input/data/shakespeare.txt\n1 = input/data/austen.txt\n2 = input/data/grimm.txt\n' >>"$d/p3.ini"
    "$MPIRUN" -np 3 -x OMP_NUM_THREADS=1 "$PCMOE" train "$d/p3.ini" --set run.dir="$d/mpi" || { echo "FAIL: mpirun"; return 1; }
    OMP_NUM_THREADS=1 "$PCMOE" train "$d/p3.ini" --simulate --set run.dir="$d/sim" || { echo "FAIL: --simulate"; return 1; }
    a=$(grep -o '"train_loss":[^,]*' "$d/mpi/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
    b=$(grep -o '"train_loss":[^,]*' "$d/sim/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
    echo "losses over MPI: $a"
    echo "losses --simulate: $b"
    worst=$(printf '%s\n%s\n' "$a" "$b" | awk 'NR == 1 { n = split($0, x, " ") } NR == 2 { split($0, y, " "); w = 0
        for (i = 1; i <= n; i++) { e = (x[i] - y[i]) / y[i]; e = e < 0 ? -e : e; if (e > w) w = e }; print (n == 18 ? w : "none") }')
    echo "worst relative difference: $worst"
    awk -v w="$worst" 'BEGIN { exit !(w != "none" && w <= 1e-6) }' || { echo "FAIL: MPI and --simulate differ"; return 1; }
    "$PCMOE" info "$d/mpi" || { echo "FAIL: pcmoe info"; return 1; }
    for p in tests/test_cuda_kernels_gpu benchmarks/gpu_gemm; do
        "$KIT/$p" >"$d/k" 2>&1
        k=$?
        echo "$p: exit $k: $(head -n 1 "$d/k")"
        [ $k -eq 0 ] || [ $k -eq 77 ] || { echo "FAIL: $p did not start"; return 1; }
    done
    rm -rf "$d"
    echo "PASS"
}

# (the step of --cpu-only, run under timeout as this script again)
if [ "$mode" = --cpu-steps ]; then cpu_only; exit $?; fi

budget=${GPU_CHECK_SECONDS:-480}
start=$(date +%s)
: >"$OUT/summary.txt"
# step NAME CAP COMMAND...: COMMAND with its output in OUT/NAME.txt, for at most CAP seconds or what is left
step() {
    name=$1 cap=$2
    shift 2
    left=$((budget - ($(date +%s) - start)))
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$cap" -le 5 ]; then echo "$name: not run (the time budget is spent)" >>"$OUT/summary.txt"; return; fi
    t0=$(date +%s)
    timeout "$cap" "$@" >>"$OUT/$name.txt" 2>&1
    rc=$?
    echo "$name: exit $rc, $(($(date +%s) - t0)) s" >>"$OUT/summary.txt"
}

{
    echo "kit: $KIT"; date -u; uname -a
    nvidia-smi -L 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    echo "CUDA libraries from: ${cuda:-(none found)}"
    echo "python3: ${py:-(none)} $([ -n "$py" ] && "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1)"
    echo "--- ldd pcmoe, pcmoe_cuda.so, mpirun, the kernel test, gpu_gemm"
    ldd "$KIT/pcmoe" "$KIT/pcmoe_cuda.so" "$KIT/ompi/bin/mpirun" "$KIT/tests/test_cuda_kernels_gpu" \
        "$KIT/benchmarks/gpu_gemm" 2>&1
} >"$OUT/env.txt" 2>&1

if [ "$mode" = --cpu-only ]; then
    step cpu 300 sh "$KIT/gpu-check.sh" "$OUT" --cpu-steps
elif ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check.sh: no GPU here (nvidia-smi -L fails): run it on a GPU machine, or with --cpu-only" | tee -a "$OUT/summary.txt"
    exit 77
else
    # (the benchmark before the sanitizer: the goals' numbers are what a short lease is for)
    step kernels 60 "$KIT/tests/test_cuda_kernels_gpu"
    step parity 150 sh "$KIT/tests/test_cuda_train_gpu.sh"
    step bench 200 sh "$KIT/benchmarks/gpu.sh" 20
    step sanitizer 240 sh "$KIT/tests/test_cuda_sanitizer.sh"
fi
echo "total: $(($(date +%s) - start)) s" >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
! grep -v ': exit 0,\|^total' "$OUT/summary.txt" | grep -q .
