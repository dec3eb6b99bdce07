#!/bin/sh
# Installs pcmoe's system dependencies from Debian/Ubuntu packages. Idempotent: installs only what is
# missing, and does nothing (no apt-get at all) when everything is present. Needs root or sudo.
#   --with-test-tools  also install what the tests use: PyTorch, NumPy, h5py (reference and checkpoint
#                      tests), clang with libFuzzer (fuzz tests), Slurm and munge (a real single-node
#                      cluster for the job scripts), groff (man page), iproute2 (network namespaces),
#                      patchelf and xz (the GPU kit, scripts/gpu-kit.sh), and
#                      a Python virtual environment with pinned transformers and torch from PyPI (the
#                      Hugging Face tests; PCMOE_HF_VENV, default /opt/pcmoe-venv as root, else
#                      ~/.local/share/pcmoe/venv); scripts/check.sh passes it
set -eu
pkgs="build-essential autoconf automake libtool pkg-config libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libopenblas-dev libjansson-dev libpcre2-dev libutf8proc-dev libsodium-dev"
[ "${1:-}" = "--with-test-tools" ] && pkgs="$pkgs python3 python3-venv python3-torch python3-numpy python3-h5py clang libclang-rt-14-dev slurmctld slurmd slurm-client munge groff-base iproute2 patchelf xz-utils"

# The Hugging Face tests' Python: transformers and a torch it supports, pinned, in their own environment
# (Debian's torch 1.13 is older than transformers supports). Installed once; reused while the pins match.
HF_PINS="torch==2.9.1 transformers==4.57.6"
hf_venv() {
    venv=${PCMOE_HF_VENV:-}
    [ -n "$venv" ] || { [ "$(id -u)" -eq 0 ] && venv=/opt/pcmoe-venv || venv="$HOME/.local/share/pcmoe/venv"; }
    if "$venv/bin/python" -c "import torch, transformers, safetensors, sys
sys.exit(not (torch.__version__.startswith('2.9.1') and transformers.__version__ == '4.57.6'))" 2>/dev/null; then
        echo "install-deps: $venv has $HF_PINS"
        return 0
    fi
    echo "install-deps: installing $HF_PINS into $venv (from PyPI)"
    /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check $HF_PINS
}

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all dependencies present"
    [ "${1:-}" = "--with-test-tools" ] && { hf_venv || exit 1; }
    exit 0
fi
echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
[ "${1:-}" = "--with-test-tools" ] && { hf_venv || exit 1; }
exit 0
