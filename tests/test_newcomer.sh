#!/bin/sh
# test_newcomer: the README's two commands in README order on one clone. The first command (demo.sh)
# configures and builds while PyTorch is not importable; the second (check.sh) installs it and runs the
# tests, which must then find it: test_torch_parity runs and passes rather than failing with "no python3
# with torch". Reproduced in a copy of the source tree with the scripts' own build step
# (scripts/build.sh), torch hidden during the first one by a PYTHONPATH entry whose torch module fails
# to import. Also: build.sh configures again when given other configure arguments.
# Skips (77) where torch is not installed at all, unless PCMOE_REQUIRE_TORCH=1.
. "$(dirname "$0")/lib.sh"

if [ -z "$(torch_python)" ]; then
    [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no python3 with torch and numpy (apt-get install python3-torch python3-numpy)"; finish; }
    echo "SKIP: no python3 with torch and numpy"
    exit 77
fi
# a clean copy of the tree: sources and the generated configure, none of this tree's build products
mkdir -p "$TMP/tree" "$TMP/notorch"
tar -C "$top_srcdir" --anchored --exclude=./.git --exclude=./runs --exclude=./Makefile --exclude=./config.status \
    --exclude=./config.log --exclude=./autoconfig.h --exclude=./stamp-h1 --exclude=./pcmoe --exclude='*.o' \
    --exclude='*.a' --exclude='*/.deps' --exclude='*.log' --exclude='*.trs' --exclude='./pcmoe-*' --exclude='./tests/*.tmp' \
    --exclude=./tests/test_gradcheck --exclude=./tests/test_flops --exclude=./tests/dump_reference -cf - . |
    tar -C "$TMP/tree" -xf - || { fail "copying the source tree"; finish; }
chmod -R u+w "$TMP/tree" # (make distcheck's source tree is read-only)
printf 'raise ImportError("torch hidden by test_newcomer")\n' > "$TMP/notorch/torch.py"

# 1. the demo's build step, torch not importable (and nothing inherited from the make running this test:
# its MAKEFLAGS would carry TEST_LOGS=this test into the copy's make check)
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
cd "$TMP/tree" || exit 99
if PYTHONPATH="$TMP/notorch" scripts/build.sh >"$TMP/build1.out" 2>&1; then ok "first build (torch hidden)"
else fail "first build: $(tail -n 20 "$TMP/build1.out")"; finish; fi
PYTHONPATH="$TMP/notorch" python3 -c "import torch" 2>/dev/null && { fail "torch was not hidden"; finish; }
# 2. the check's build step and the parity test, torch importable, a missing torch being a failure
scripts/build.sh >"$TMP/build2.out" 2>&1 || { fail "second build: $(tail -n 20 "$TMP/build2.out")"; finish; }
grep -q "configuring again" "$TMP/build2.out" && fail "build.sh configured again without a reason"
if PCMOE_REQUIRE_TORCH=1 make check TESTS=tests/test_torch_parity.sh >"$TMP/check.out" 2>&1 &&
   grep -q "^PASS: tests/test_torch_parity.sh" "$TMP/check.out"; then
    ok "torch installed after configure is found by the tests: test_torch_parity passes"
else
    fail "after configuring without torch: $(grep -h 'FAIL\|SKIP\|PASS' "$TMP/check.out" tests/test_torch_parity.log 2>/dev/null | head -n 5)"
fi
# 3. other configure arguments configure again; the same ones do not
scripts/build.sh --disable-dependency-tracking >"$TMP/build3.out" 2>&1 && grep -q "configuring again" "$TMP/build3.out" &&
    ./config.status --config | grep -q disable-dependency-tracking && ok "build.sh configures again for new arguments" ||
    fail "build.sh with new configure arguments: $(tail -n 5 "$TMP/build3.out")"
scripts/build.sh --disable-dependency-tracking >"$TMP/build4.out" 2>&1 && ! grep -q "configuring again" "$TMP/build4.out" &&
    ok "build.sh keeps the configuration for the same arguments" || fail "build.sh reconfigured for the same arguments"
finish
