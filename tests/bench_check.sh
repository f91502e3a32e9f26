#!/usr/bin/env bash
# fab-bench's acceptance checks (--check), JSON and SVG reports, on the short CPU
# gelu suite: rules that are met pass (exit 0), a rule a row misses or that matches
# no row fails (exit 3, named in the output), a malformed thresholds file is
# refused before anything runs (exit 2, file:line named). What the rows measure
# does not matter here, only that the verdicts follow the rules.
#   usage: bench_check.sh PATH/TO/fab-bench
set -uo pipefail
bench=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
run() { # run NAME ARGS...: fab-bench's exit status in $rc, its output in $dir/NAME.out
    local name=$1; shift
    "$bench" --backend cpu --suite gelu --quick --reps 1 "$@" > "$dir/$name.out" 2>&1
    rc=$?
}
expect() { # expect NAME RC PATTERN...
    local name=$1 want=$2; shift 2
    [ "$rc" -eq "$want" ] || fail "$name: exit status $rc, expected $want"
    for p in "$@"; do
        grep -qE -- "$p" "$dir/$name.out" || fail "$name: output lacks /$p/"
    done
}

cat > "$dir/met.txt" <<'EOF'
# comments and blank lines are skipped

gelu | gelu_forward* | n=*  | *    | ratio >= 0      # every forward row
gelu | *             | *    | bf16 | rate >= 0
EOF
run met --check "$dir/met.txt" --json "$dir/met.json" --svg "$dir/met.svg"
expect met 0 'acceptance .*: 2 rules, 0 failed; 6 rows checked: 6 PASS, 0 FAIL' \
    'gelu_forward erf +n=[0-9]+ +f32 .* PASS$' 'gelu_backward erf +n=[0-9]+ +f32 .* -$'
grep -q '"check": {"file": ".*met.txt", "rules": 2, "failed_rules": 0, "pass": true}' "$dir/met.json" \
    || fail "met: JSON lacks the check summary"
[ "$(grep -c '"check": "pass"' "$dir/met.json")" -eq 6 ] || fail "met: JSON should mark 6 rows pass"
[ "$(grep -c '"check": null' "$dir/met.json")" -eq 2 ] || fail "met: JSON should mark 2 rows unchecked"
head -c 5 "$dir/met.svg" | grep -q '<svg' && tail -n 1 "$dir/met.svg" | grep -q '</svg>' \
    || fail "met: the SVG is not a whole <svg> document"
[ "$(grep -c '<rect x=' "$dir/met.svg")" -eq 8 ] || fail "met: the SVG should have one bar per row (8)"
if command -v python3 > /dev/null; then
    python3 -c 'import json, sys, xml.dom.minidom as m; json.load(open(sys.argv[1])); m.parse(sys.argv[2])' \
        "$dir/met.json" "$dir/met.svg" || fail "met: JSON or SVG does not parse"
fi

cat > "$dir/missed.txt" <<'EOF'
gelu | gelu_forward erf | *   | f32 | rate >= 1e30
gelu | gelu_forward erf | *   | f32 | ms <= 1e30
gelu | no_such_op*      | *   | *   | ratio >= 0
EOF
run missed --check "$dir/missed.txt" --json "$dir/missed.json"
expect missed 3 'acceptance .*: 3 rules, 2 failed; 1 row checked: 0 PASS, 1 FAIL' \
    'missed.txt:1: gelu gelu_forward erf n=[0-9]+ f32: rate [0-9.]+, needs >= 1e\+30' \
    'missed.txt:3: .*no_such_op.*matched no row' 'gelu_forward erf +n=[0-9]+ +f32 .* FAIL$'
grep -q '"failed_rules": 2, "pass": false' "$dir/missed.json" || fail "missed: JSON should say pass false"

printf 'gelu | * | * | * | rate <= 0\n' > "$dir/at_most.txt"
run at_most --check "$dir/at_most.txt"
expect at_most 3 '1 rule, 1 failed; 8 rows checked: 0 PASS, 8 FAIL'

# malformed files: refused with the line, before any suite runs
bad() { # bad NAME 'CONTENT' PATTERN
    printf '%b' "$2" > "$dir/$1.txt"
    run "$1" --check "$dir/$1.txt"
    expect "$1" 2 "$3"
    ! grep -q '^suite ' "$dir/$1.out" || fail "$1: suites ran despite the bad file"
}
bad fields   'gelu | * | * | ratio >= 0\n'                 "fields.txt:1: fewer than 5 fields"
bad toomany  '# ok\ngelu | * | * | * | * | ratio >= 0\n'   "toomany.txt:2: more than 5 fields"
bad metric   'gelu | * | * | * | speed >= 0\n'             "metric.txt:1: the metric must be"
bad compare  'gelu | * | * | * | ratio > 0\n'              "compare.txt:1: the comparison must be"
bad number   'gelu | * | * | * | ratio >= fast\n'          "number.txt:1: the limit must be a number"
bad trailing 'gelu | * | * | * | ratio >= 1 2\n'           "trailing.txt:1: the limit must be a number"
bad empty    'gelu |  | * | * | ratio >= 0\n'              "empty.txt:1: an empty pattern"
bad norules  '# nothing\n\n'                               "norules.txt: no rules"
run nofile --check "$dir/does-not-exist.txt"
expect nofile 2 'does-not-exist.txt'

echo "bench_check: $fails failure(s)"
[ "$fails" -eq 0 ]
