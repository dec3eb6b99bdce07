#!/bin/sh
# Builds the GPU kit: one folder that proves the CUDA backend on a bare GPU machine in one command. Such a
# machine has the CUDA toolkit, its driver, compute-sanitizer and a Python with torch, but no MPI, HDF5,
# OpenBLAS or Autotools, and no package registry. The kit carries everything else pcmoe needs:
#   pcmoe, pcmoe_cuda.so (sm_80 and sm_90), tests/test_cuda_kernels_gpu, benchmarks/gpu_gemm;
#   lib/: every shared library they and Open MPI load, but the C library's own and CUDA's (the machine's);
#   ompi/: Open MPI's launcher (mpirun, orted), its plugins (lib/openmpi3), help texts and parameters,
#          made relocatable (OPAL_PREFIX and friends; every ELF file's RUNPATH is $ORIGIN-relative);
#   the test and benchmark scripts, input/ (configs and corpora), and gpu-check.sh, which runs it all.
#   usage: scripts/gpu-kit.sh [DIR]   (default build/gpu-kit; also writes DIR.tar.xz unless GPU_KIT_PACK=0;
#          GPU_KIT_BUILD=0 takes what is built already, as tests/test_gpu_kit.sh does inside make check)
#   on the GPU machine: tar xf gpu-kit.tar.xz && sh gpu-kit/gpu-check.sh OUT   (docs/cuda.md)
set -eu
cd "$(dirname "$0")/.."
kit=${1:-build/gpu-kit}
command -v patchelf >/dev/null || { echo "gpu-kit: needs patchelf (apt-get install patchelf)" >&2; exit 2; }
if [ "${GPU_KIT_BUILD:-1}" = 1 ]; then
    command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu-kit: needs nvcc (the CUDA toolkit)" >&2; exit 2; }
    scripts/build.sh
    grep -q '^#define HAVE_CUDA 1' autoconfig.h || { echo "gpu-kit: configure found no CUDA: see docs/cuda.md" >&2; exit 2; }
    make -s tests/test_cuda_kernels_gpu benchmarks/gpu_gemm
fi
for f in pcmoe pcmoe_cuda.so tests/test_cuda_kernels_gpu benchmarks/gpu_gemm; do
    [ -f "$f" ] || { echo "gpu-kit: $f is not built (a build with CUDA: scripts/build.sh)" >&2; exit 2; }
done

rm -rf "$kit"
mkdir -p "$kit/lib/openmpi3" "$kit/ompi/bin" "$kit/ompi/share" "$kit/ompi/etc" "$kit/tests/reference" \
    "$kit/benchmarks" "$kit/input/data"
cp pcmoe pcmoe_cuda.so "$kit/"
cp tests/test_cuda_kernels_gpu "$kit/tests/"
cp benchmarks/gpu_gemm "$kit/benchmarks/"
cp tests/lib.sh tests/test_cuda_train.sh tests/test_cuda_train_gpu.sh tests/test_cuda_sanitizer.sh "$kit/tests/"
cp tests/reference/model.py "$kit/tests/reference/"
cp benchmarks/common.sh benchmarks/gpu.sh benchmarks/torch_step.py "$kit/benchmarks/"
cp input/*.ini "$kit/input/"
cp input/data/*.txt "$kit/input/data/"
cp scripts/gpu-check.sh "$kit/gpu-check.sh"

# Open MPI: the launcher, its plugins, help texts and parameters (paths from ompi_info)
ompi_path() { ompi_info --path "$1" --parsable | sed -n "s/^path:$1:\(.*\)/\1/p" | head -n 1; }
bindir=$(ompi_path bindir) pkglibdir=$(ompi_path pkglibdir) pkgdatadir=$(ompi_path pkgdatadir) sysconfdir=$(ompi_path sysconfdir)
for b in mpirun orterun orted; do cp -L "$bindir/$b" "$kit/ompi/bin/"; done
cp -L "$pkglibdir"/*.so "$kit/lib/openmpi3/"
cp -rL "$pkgdatadir" "$kit/ompi/share/openmpi"
cp -L "$sysconfdir"/openmpi-mca-params.conf "$kit/ompi/etc/" 2>/dev/null || : >"$kit/ompi/etc/openmpi-mca-params.conf"
: >"$kit/ompi/etc/openmpi-default-hostfile"

# every shared library the ELF files load, but the C library's, the C++ runtime's (the machine's is newer, and
# its CUDA libraries may need it) and the machine's CUDA and driver libraries
system_lib() {
    case $(basename "$1") in
    ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*) return 0 ;;
    libcuda.so*|libcudart.so*|libcublas*|libnvidia*|libnvrtc*|libcupti*) return 0 ;;
    esac
    return 1
}
elf_files() { find "$kit" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) | while read -r f; do
    head -c 4 "$f" | grep -q 'ELF' && echo "$f"; done; }
n=0
while :; do # (the closure: libraries of libraries, until nothing new)
    new=0
    for f in $(elf_files); do
        for dep in $(ldd "$f" 2>/dev/null | awk '/=> \// { print $3 }'); do
            system_lib "$dep" && continue
            name=$(basename "$dep")
            [ -e "$kit/lib/$name" ] && continue
            cp -L "$dep" "$kit/lib/$name"
            new=$((new + 1))
        done
    done
    n=$((n + new))
    [ "$new" -eq 0 ] && break
done

# RUNPATHs relative to each file, so that the kit works wherever it is unpacked
for f in $(elf_files); do
    case $f in
    "$kit"/lib/openmpi3/*) rp='$ORIGIN/..' ;;
    "$kit"/lib/*) rp='$ORIGIN' ;;
    "$kit"/ompi/bin/*) rp='$ORIGIN/../../lib' ;;
    "$kit"/tests/*|"$kit"/benchmarks/*) rp='$ORIGIN/../lib' ;;
    *) rp='$ORIGIN/lib' ;;
    esac
    patchelf --set-rpath "$rp" "$f"
done
echo "gpu-kit: $kit: $(du -sh "$kit" | cut -f1), $n shared libraries in lib/"
if [ "${GPU_KIT_PACK:-1}" = 1 ]; then
    tar -C "$(dirname "$kit")" -cf - "$(basename "$kit")" | xz -T0 -6 > "$kit.tar.xz"
    mib=$(( $(wc -c < "$kit.tar.xz") / 1048576 ))
    echo "gpu-kit: $kit.tar.xz: $mib MiB"
    [ "$mib" -le 48 ] || { echo "gpu-kit: $kit.tar.xz is over 48 MiB" >&2; exit 1; }
fi
