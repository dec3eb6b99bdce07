#!/bin/sh
# test_torch_parity: the C engine against the independent PyTorch model in tests/reference/ (float64):
# logits, loss terms and every gradient of one step, then five AdamW steps, to relative error <= 1e-4 (the
# weights after the five steps: <= 5e-4, see check_parity.py).
# Skips (77) when no python3 with torch is found (looked for now, see tests/lib.sh), unless PCMOE_REQUIRE_TORCH=1 (set by scripts/check.sh,
# which installs it), where a missing torch is a failure.
. "$(dirname "$0")/lib.sh"

TORCH_PYTHON=$(torch_python)
if [ -z "$TORCH_PYTHON" ]; then
    if [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ]; then fail "no python3 with torch and numpy (apt-get install python3-torch python3-numpy)"; finish; fi
    echo "SKIP: no python3 with torch and numpy (apt-get install python3-torch python3-numpy)"
    exit 77
fi
"$top_builddir/tests/dump_reference" "$TMP/ref.bin" || { fail "dump_reference failed"; finish; }
"$TORCH_PYTHON" "$top_srcdir/tests/reference/check_parity.py" "$TMP/ref.bin" && ok "parity with PyTorch" || fail "parity with PyTorch"
finish
