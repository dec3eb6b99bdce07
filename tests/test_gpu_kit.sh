#!/bin/sh
# test_gpu_kit: the GPU kit (scripts/gpu-kit.sh) needs nothing that a bare GPU machine lacks. The kit is
# built from this build tree; then, in a mount namespace where the system's Open MPI (launcher, libraries,
# plugins, runtime), HDF5, OpenBLAS, Jansson, utf8proc and libsodium are hidden (/dev/null or an empty tmpfs over
# each), the system's own pcmoe cannot start, while the kit's gpu-check.sh --cpu-only runs 3 pcmoe
# parties over the kit's own mpirun with a checkpoint (their losses equal --simulate's within 1e-6), reads the
# checkpoint back with pcmoe info, and starts the kernel test and gpu_gemm (which skip without a device). Every
# library pcmoe, mpirun, the kernel test and gpu_gemm load comes from the kit, the C library's and CUDA's
# aside. Skips (77) without a CUDA build, patchelf or mount namespaces.
. "$(dirname "$0")/lib.sh"
[ -f "$top_builddir/pcmoe_cuda.so" ] && [ -f "$top_builddir/tests/test_cuda_kernels_gpu" ] \
    || { echo "SKIP: not built with CUDA (the kit carries the CUDA backend)"; exit 77; }
command -v patchelf >/dev/null || { echo "SKIP: no patchelf (scripts/install-deps.sh --with-test-tools)"; exit 77; }
unshare -m true 2>/dev/null || { echo "SKIP: cannot create a mount namespace here"; exit 77; }
kit="$TMP/gpu-kit"
(cd "$top_builddir" && GPU_KIT_BUILD=0 GPU_KIT_PACK=0 sh "$top_srcdir/scripts/gpu-kit.sh" "$kit") >"$TMP/kit.out" 2>&1 \
    && ok "$(tail -n 1 "$TMP/kit.out")" || { cat "$TMP/kit.out"; fail "building the kit"; finish; }

# what to hide: what a bare GPU machine lacks (Open MPI with its runtime and plugins, HDF5 and its filters,
# OpenBLAS with its Fortran runtime, Jansson, utf8proc, libsodium), every file of it the kit carries a copy of, and Open
# MPI's own directories. (Libraries that the machine's own tools load, PCRE2 for grep say, stay: it has them.)
libdir=/usr/lib/x86_64-linux-gnu
hide="$TMP/hide.list"
for f in "$kit"/lib/*.so*; do
    case $(basename "$f") in
    libmpi*|libopen-rte*|libopen-pal*|liboshmem*|libmca_common_*|libpmix*|libhwloc*|libevent*|libhdf5*|libsz*|libaec*) ;;
    libopenblas*|libgfortran*|libquadmath*|libjansson*|libutf8proc*|libsodium*) ;;
    *) continue ;;
    esac
    for p in "$libdir/$(basename "$f")" "/lib/x86_64-linux-gnu/$(basename "$f")"; do
        [ -e "$p" ] && readlink -f "$p" && echo "$p"
    done
done | sort -u >"$hide"
for b in mpirun orterun orted mpiexec; do command -v "$b"; done >>"$hide"
[ -s "$hide" ] || { fail "nothing of the system to hide"; finish; }
cat >"$TMP/inside.sh" <<'SH'
mount --make-rprivate / || exit 90
while read -r f; do [ -e "$f" ] && { mount --bind /dev/null "$f" || exit 91; }; done < "$1"
for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/lib/x86_64-linux-gnu/hdf5 \
    /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/share/openmpi /etc/openmpi; do
    [ -d "$d" ] && { mount -t tmpfs none "$d" || exit 92; }
done
"$2" --version >"$3/system.out" 2>&1 && exit 93 # (the system's pcmoe must not start now)
sh "$4/gpu-check.sh" "$3/out" --cpu-only
SH
unshare -m sh "$TMP/inside.sh" "$hide" "$PCMOE" "$TMP" "$kit" >"$TMP/check.out" 2>&1
rc=$?
n=$(wc -l <"$hide")
case $rc in
0) ok "with $n system files hidden the system's pcmoe cannot start ($(head -n 1 "$TMP/system.out" | cut -c1-100)), and the kit's check passes: $(tr '\n' ' ' <"$TMP/out/summary.txt")" ;;
93) fail "the system's pcmoe still starts with $n files hidden: the hiding does not work" ;;
9[0-2]) fail "could not hide the system's libraries (exit $rc): $(cat "$TMP/check.out")" ;;
*) fail "gpu-check.sh --cpu-only: exit $rc: $(cat "$TMP/check.out") $(tail -n 20 "$TMP/out/cpu.txt" 2>/dev/null)" ;;
esac
grep -q '^worst relative difference' "$TMP/out/cpu.txt" 2>/dev/null && ok "kit: 3 parties over its mpirun: $(grep '^worst' "$TMP/out/cpu.txt")"
# every library pcmoe and mpirun load, as ldd saw them there, comes from the kit (or is the C library's, the C++
# runtime's or CUDA's)
outside=$(sed -n '/^--- ldd/,$p' "$TMP/out/env.txt" | awk '/=>/ { print $3 }' | grep -v "^$kit/" \
    | grep -Ev '/(ld-linux[^/]*|libc|libm|libpthread|libdl|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' || true)
nf=$(sed -n '/^--- ldd/,$p' "$TMP/out/env.txt" | grep -c 'not found')
for l in libmpi.so.40 libhdf5_serial.so.103 libopenblas.so.0 libjansson.so.4 libsodium.so.23; do # (and ldd did list them)
    grep -q "$l => $kit/lib/$l" "$TMP/out/env.txt" 2>/dev/null || nf=$((nf + 1))
done
[ -z "$outside" ] && [ "$nf" = 0 ] && ok "every library of pcmoe, pcmoe_cuda.so, mpirun, the kernel test and gpu_gemm comes from the kit (C and CUDA aside)" \
    || fail "libraries from outside the kit: $outside; not found or not from the kit: $nf ($(grep 'not found' "$TMP/out/env.txt" | head -n 3))"
finish
