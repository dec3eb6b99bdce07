#!/bin/sh
# Installs pcmoe's system dependencies from Debian/Ubuntu packages. Idempotent: installs only what is
# missing, and does nothing (no apt-get at all) when everything is present. Needs root or sudo.
#   --with-test-tools  also install what the tests use: PyTorch, NumPy, h5py (reference and checkpoint
#                      tests), clang with libFuzzer (fuzz tests), Slurm and munge (a real single-node
#                      cluster for the job scripts), groff (man page), iproute2 (network namespaces);
#                      scripts/check.sh passes it
set -eu
pkgs="build-essential autoconf automake libtool pkg-config libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libopenblas-dev"
[ "${1:-}" = "--with-test-tools" ] && pkgs="$pkgs python3 python3-torch python3-numpy python3-h5py clang libclang-rt-14-dev slurmctld slurmd slurm-client munge groff-base iproute2"

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all dependencies present"
    exit 0
fi
echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
