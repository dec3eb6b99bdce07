#!/bin/sh
# test_docs: the reference pages generated from the binary's key table have not drifted from it:
# docs/config.md is exactly `pcmoe keys --markdown`, and the man page's key list (between its KEYS BEGIN
# and KEYS END comments) exactly `pcmoe keys --man`. Shown failing too: a key table whose one doc string
# changed (src/config.c, copied and edited, built into a small keys program) must fail both comparisons.
# `make docs` (scripts/gen-docs.sh) writes both pages again.
. "$(dirname "$0")/lib.sh"

# man_keys FILE: the man page's generated key list
man_keys() { awk '/^\.\\" KEYS END/ { on = 0 } on { print } /^\.\\" KEYS BEGIN/ { on = 1 }' "$1"; }

# drift NAME PROGRAM...: compares what PROGRAM keys --markdown / --man prints with the committed pages;
# prints "config.md" and/or "pcmoe.1" for each that differs
drift() {
    "$@" keys --markdown > "$TMP/config.md" 2>&1
    "$@" keys --man > "$TMP/keys.man" 2>&1
    man_keys "$top_srcdir/pcmoe.1" > "$TMP/page.man"
    cmp -s "$TMP/config.md" "$top_srcdir/docs/config.md" || echo config.md
    cmp -s "$TMP/keys.man" "$TMP/page.man" || echo pcmoe.1
}

[ -n "$(man_keys "$top_srcdir/pcmoe.1")" ] || { fail "pcmoe.1 has no KEYS BEGIN / KEYS END key list"; finish; }
out=$(drift "$PCMOE" | tr '\n' ' ')
if [ -z "$out" ]; then ok "docs/config.md and the man page's key list are what pcmoe keys prints"
else
    fail "drift in: $out (run make docs); diff of docs/config.md:
$(diff "$TMP/config.md" "$top_srcdir/docs/config.md" | head -n 10)"
fi

# the same comparison against a key table with one doc string changed
MPICC=${MPICC:-mpicc}
sed 's/"residual stream width d"/"residual stream width d (changed)"/' "$top_srcdir/src/config.c" > "$TMP/config.c"
if cmp -s "$TMP/config.c" "$top_srcdir/src/config.c"; then fail "could not change model.d_model's doc string"; finish; fi
printf 'int config_keys_main(int argc, char **argv);\nint main(int argc, char **argv) { return config_keys_main(argc, argv); }\n' > "$TMP/keys_main.c"
# shellcheck disable=SC2086
if "$MPICC" -std=c11 -D_POSIX_C_SOURCE=200809L -I"$top_srcdir/src" -I"$top_builddir" ${HDF5_CFLAGS-$(pkg-config --cflags hdf5-serial)} \
        -o "$TMP/keys" "$TMP/keys_main.c" "$TMP/config.c" "$top_srcdir/src/util.c" "$top_srcdir/src/hf_config.c" \
        ${HDF5_LIBS-$(pkg-config --libs hdf5-serial)} $(pkg-config --libs jansson) -lm 2>"$TMP/build.log"; then
    out=$(drift "$TMP/keys")
    # both pages differ, and only in that key's line
    changed=$(diff "$TMP/config.md" "$top_srcdir/docs/config.md" | grep -c '^[<>]')
    if [ "$(printf '%s' "$out" | tr '\n' ' ')" = "config.md pcmoe.1" ] && [ "$changed" -eq 2 ] &&
       grep -q "residual stream width d (changed)" "$TMP/config.md" "$TMP/keys.man"; then
        ok "a changed doc string is drift in both pages: $(diff "$TMP/config.md" "$top_srcdir/docs/config.md" | grep '^<')"
    else
        fail "a changed doc string was not caught (drift: '$out', $changed lines differ)"
    fi
else
    fail "building the changed key table: $(head -n 5 "$TMP/build.log")"
fi
finish
