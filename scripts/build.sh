#!/bin/sh
# Builds pcmoe in the source tree: bootstrap (if configure is missing), configure (if not yet configured,
# or configured with other arguments than the ones given here; extra arguments go to configure), make.
# Used by demo.sh and check.sh, in either order and as often as you like. Nothing it does depends on what
# was installed when it last ran: the tests look for their tools (PyTorch, h5py, ...) when they run.
set -eu
cd "$(dirname "$0")/.."
[ -x configure ] || ./bootstrap
# the options (--...) of a configure command line, one per line; variables (VAR=value) are left out,
# since configure also records those it found set in the environment
options() { for a in "$@"; do case $a in --*) echo "$a" ;; esac; done; }
if [ ! -f Makefile ] || [ ! -x config.status ]; then
    ./configure "$@"
elif [ $# -gt 0 ] && [ "$(eval "options $(./config.status --config)")" != "$(options "$@")" ]; then
    echo "build: configured with: $(./config.status --config); configuring again with: $*"
    ./configure "$@"
fi
make -j"$(nproc)"
