#!/bin/sh
# Writes the reference pages generated from the binary's key table (src/config.c): docs/config.md
# (pcmoe keys --markdown) and the key list of the man page pcmoe.1 (pcmoe keys --man, between its
# KEYS BEGIN and KEYS END comments). `make docs` runs it after changing a key; tests/test_docs.sh fails
# when either differs from what the binary prints. PCMOE names the binary (default: ./pcmoe).
set -eu
cd "$(dirname "$0")/.."
PCMOE=${PCMOE:-./pcmoe}
"$PCMOE" keys --markdown > docs/config.md.tmp
mv docs/config.md.tmp docs/config.md
"$PCMOE" keys --man > pcmoe.1.keys
awk -v keys=pcmoe.1.keys '
    /^\.\\" KEYS BEGIN/ { print; while ((getline line < keys) > 0) print line; skip = 1; next }
    /^\.\\" KEYS END/ { skip = 0 }
    !skip' pcmoe.1 > pcmoe.1.tmp
grep -q '^\.\\" KEYS END' pcmoe.1.tmp || { echo "gen-docs: pcmoe.1 lacks its KEYS BEGIN / KEYS END comments" >&2; rm -f pcmoe.1.tmp pcmoe.1.keys; exit 1; }
mv pcmoe.1.tmp pcmoe.1
rm -f pcmoe.1.keys
echo "gen-docs: wrote docs/config.md and the key list of pcmoe.1"
