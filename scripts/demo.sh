#!/bin/sh
# The README's first command: set everything up on a fresh Debian/Ubuntu machine and run the demo.
# Installs dependencies, builds, and trains input/demo.ini: 4 parties (4 MPI ranks) with corpora of
# different styles train one MoE model together, into runs/demo.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 4 --oversubscribe ./pcmoe train input/demo.ini --force
echo "demo: metrics in runs/demo/metrics.jsonl, summary in runs/demo/summary.json"
cat runs/demo/summary.json
