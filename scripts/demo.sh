#!/bin/sh
# The README's first command: set everything up on a fresh Debian/Ubuntu machine and run the demo.
# Installs dependencies, builds, and trains input/shakespeare.ini (single party) into runs/demo.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
./pcmoe train input/shakespeare.ini --set run.dir=runs/demo --force
echo "demo: metrics in runs/demo/metrics.jsonl, summary in runs/demo/summary.json"
cat runs/demo/summary.json
