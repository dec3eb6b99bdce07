#!/bin/sh
# test_style: the house rules that a reader sees first, held for every file in src/ and cuda/: lines of at
# most 120 columns, no function in src/ over 100 lines (from its opening line to its closing brace), and no
# open_memstream outside the JSON writer (there is none at all: src/json.c builds text in memory itself).
# Each rule is also shown to fail: on a planted long line and a planted long function.
. "$(dirname "$0")/lib.sh"

# long_lines FILE...: "file:line: N columns" for every line over 120 columns
long_lines() { awk 'length($0) > 120 { printf "%s:%d: %d columns\n", FILENAME, FNR, length($0) }' "$@"; }
# long_functions FILE...: "file:line: name: N lines" for every top-level function over 100 lines, from the
# first line of its signature (a line at file level that starts a name and opens a parenthesis; the
# signature may go on over several lines) to the "}" in column 0 that closes its body
long_functions() {
    awk '
        FNR == 1 { depth = 0; start = 0; sig = 0 }
        depth == 0 && /^[A-Za-z_].*\(/ && !/^(typedef|struct|enum|union)/ && !sig { sig = FNR; name = $0 }
        {
            before = depth
            n = gsub(/\{/, "{"); m = gsub(/\}/, "}"); depth += n - m
            if (before == 0 && depth > 0 && sig && !/=/) start = sig
            if (depth == 0 && (/;[ \t]*$/ || /^[ \t]*$/ || /^#/)) sig = 0
        }
        depth == 0 && start && /^\}/ {
            if (FNR - start + 1 > 100) printf "%s:%d: %s: %d lines\n", FILENAME, start, name, FNR - start + 1
            start = 0; sig = 0
        }
    ' "$@"
}

files=$(ls src/*.c src/*.h cuda/*.cu cuda/*.cuh cuda/*.h cuda/emu/*.h cuda/emu/*.cpp 2>/dev/null)
# shellcheck disable=SC2086
out=$(long_lines $files)
[ -z "$out" ] && ok "every line in src/ and cuda/ is at most 120 columns" || fail "lines over 120 columns:
$out"
# shellcheck disable=SC2086
out=$(long_functions src/*.c)
[ -z "$out" ] && ok "no function in src/ is over 100 lines" || fail "functions over 100 lines:
$out"
out=$(grep -ln "open_memstream" src/*.c src/*.h | grep -v "^src/json\.[ch]$")
[ -z "$out" ] && ok "no open_memstream outside the JSON writer" || fail "open_memstream in: $out"

# the checks themselves catch what they are for
{ printf 'static int f(int a,\n                 int b) {\n'; i=0; while [ $i -lt 100 ]; do printf '    x++;\n'; i=$((i + 1)); done; printf '}\n'; } > "$TMP/long.c"
printf 'int g(void) { return 0; } // %0130d\n' 0 >> "$TMP/long.c"
[ -n "$(long_functions "$TMP/long.c")" ] && ok "a planted 103-line function (its signature on two lines) is found" ||
    fail "the function check missed a 103-line function"
[ -n "$(long_lines "$TMP/long.c")" ] && ok "a planted long line is found" || fail "the line check missed a long line"
finish
