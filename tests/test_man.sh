#!/bin/sh
# test_man: the man page renders without groff warnings, documents every command, and lists every
# config key the parser accepts (from `pcmoe keys`). `make install` puts it, the program, the example
# configs, the demo corpora and the job scripts in place (checked with DESTDIR).
. "$(dirname "$0")/lib.sh"

page="$top_srcdir/pcmoe.1"
command -v groff >/dev/null || { [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no groff (apt-get install groff-base)"; finish; }; echo "SKIP: no groff"; exit 77; }
warn=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
[ -z "$warn" ] && ok "pcmoe.1 renders without warnings" || fail "groff warnings: $warn"
text=$(groff -man -Tutf8 "$page" 2>/dev/null | sed 's/.\x08//g')
for cmd in "pcmoe train" "pcmoe eval" "pcmoe bench" "pcmoe generate" "pcmoe info" "pcmoe attack" "pcmoe keys" "--resume" "--simulate" "--audit" "--stop-after" "EXIT STATUS" "SIGNALS"; do
    printf '%s\n' "$text" | grep -qF -- "$cmd" || fail "man page lacks '$cmd'"
done
n=0
for k in $("$PCMOE" keys | awk '/^  [a-z]+\.[a-z0-9_<>N]+ / { print $1 }'); do
    n=$((n + 1))
    printf '%s\n' "$text" | grep -qF -- "$k" || fail "man page lacks config key $k"
done
[ "$n" -ge 40 ] && ok "man page lists all $n config keys" || fail "pcmoe keys listed only $n keys"

# make install into a staging directory
if [ -f "$top_builddir/Makefile" ]; then
    make -C "$top_builddir" install DESTDIR="$TMP/stage" prefix=/opt/pcmoe >"$TMP/install.log" 2>&1 || { tail -n 20 "$TMP/install.log"; fail "make install"; finish; }
    for f in bin/pcmoe share/man/man1/pcmoe.1 share/pcmoe/examples/demo.ini share/pcmoe/input/data/shakespeare.txt share/pcmoe/jobscripts/pcmoe.sbatch; do
        [ -s "$TMP/stage/opt/pcmoe/$f" ] || fail "make install did not install $f"
    done
    "$TMP/stage/opt/pcmoe/bin/pcmoe" --version >/dev/null && ok "make install: program, man page, examples, corpora, job scripts" || fail "installed pcmoe does not run"
    if [ -f "$top_builddir/pcmoe_cuda.so" ]; then # the CUDA backend plugin: installed, and the installed pcmoe loads it
        plugin="$TMP/stage/opt/pcmoe/libexec/pcmoe/pcmoe_cuda.so"
        PCMOE_CUDA_PLUGIN="$plugin" "$TMP/stage/opt/pcmoe/bin/pcmoe" train input/tiny.ini --set run.device=cuda \
            --set run.dir="$TMP/cuda_run" >"$TMP/cuda.out" 2>&1
        if [ -s "$plugin" ] && ! grep -q "cannot load\|not a pcmoe CUDA backend\|built without CUDA" "$TMP/cuda.out"; then
            ok "make install: the CUDA plugin, loaded by the installed pcmoe: $(grep -m1 'pcmoe: error\|step' "$TMP/cuda.out" || echo trained)"
        else
            fail "the CUDA plugin ($plugin): $(cat "$TMP/cuda.out" | head -n 3)"
        fi
    fi
fi
finish
