#!/bin/sh
# Builds pcmoe in the source tree: bootstrap (if configure is missing), configure (if not yet
# configured; extra arguments go to configure), make. Used by demo.sh and check.sh.
set -eu
cd "$(dirname "$0")/.."
[ -x configure ] || ./bootstrap
[ -f Makefile ] || ./configure "$@"
make -j"$(nproc)"
