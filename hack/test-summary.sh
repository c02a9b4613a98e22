#!/usr/bin/env bash
# Summarises the output of `go test -v` (a log file, or stdin): tests per package, the skipped
# tests with their reasons, and a closing line "N passed, N failed, N skipped".
#
# Counts every "--- PASS/FAIL/SKIP" line, subtests included. A package that fails without a
# failing test (build failure, panic, timeout, TestMain) counts as one failure.
#
# With CI=true, a skipped test, or a package that reports ok without running any test, fails the
# summary unless it matches a regexp in hack/ci-allowed-skips.txt: in CI every prerequisite is
# installed, so a skip means a test silently did not run.
#
# Exit status: 1 if anything failed or CI found a disallowed skip, else 0.
set -euo pipefail

allow_file="$(cd "$(dirname "$0")" && pwd)/ci-allowed-skips.txt"
log="${1:-/dev/stdin}"

awk -v ci="${CI:-}" -v allow_file="$allow_file" '
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function allowed(s,   i) {
	for (i = 1; i <= nallow; i++) if (s ~ allow[i]) return 1
	return 0
}
function close_pkg(pkg, result,   i) {
	if (!(pkg in seen)) { seen[pkg] = 1; order[++npkgs] = pkg }
	pkgpass[pkg] += ppass; pkgfail[pkg] += pfail; pkgskip[pkg] += pskip
	if (result == "FAIL" && pfail == 0) {
		failed++; pkgfail[pkg]++
		nbroken++; broken[nbroken] = pkg
	}
	if (result == "ok" && ppass + pfail + pskip == 0) { nempty++; empty[nempty] = pkg }
	for (i = 1; i <= npending; i++) {
		nskips++
		skipname[nskips] = pkg "." pending[i]
		skipwhy[nskips] = pendingwhy[i]
	}
	ppass = pfail = pskip = npending = 0
}
BEGIN {
	while ((getline line < allow_file) > 0) {
		line = trim(line)
		if (line == "" || line ~ /^#/) continue
		allow[++nallow] = line
	}
	close(allow_file)
}
# === RUN / PAUSE / CONT / NAME: later indented output belongs to this test.
/^=== (RUN|PAUSE|CONT|NAME) / {
	cur = $3
	if ($2 == "RUN") why[cur] = ""
	next
}
/^ *--- (PASS|FAIL|SKIP): / {
	res = $2; name = $3
	if (res == "PASS:") { passed++; ppass++ }
	else if (res == "FAIL:") { failed++; pfail++ }
	else {
		skipped++; pskip++
		pending[++npending] = name
		pendingwhy[npending] = why[name]
	}
	next
}
# Output of t.Log / t.Skip: indented "file.go:NN: message", continuation lines indented further.
# Keep the last message of each test: for a skipped test, that is the reason.
/^[ \t]+[^ \t]/ {
	if (cur == "") next
	if ($0 ~ /^[ \t]+[^ \t]+\.go:[0-9]+: /) why[cur] = trim($0)
	else if (why[cur] != "") why[cur] = why[cur] " " trim($0)
	next
}
/^ok[ \t]/          { close_pkg($2, "ok"); next }
/^FAIL[ \t]+[^ \t]/ { close_pkg($2, "FAIL"); next }
END {
	print ""
	print "==== test summary ===="
	if (npkgs > 0) {
		printf "%-64s %6s %6s %6s\n", "package", "pass", "fail", "skip"
		for (i = 1; i <= npkgs; i++) {
			p = order[i]
			printf "%-64s %6d %6d %6d\n", p, pkgpass[p], pkgfail[p], pkgskip[p]
		}
	}
	for (i = 1; i <= nbroken; i++)
		print "package failed without a failing test (build failure, panic, timeout or TestMain): " broken[i]
	if (nskips > 0) {
		print ""
		print "skipped tests:"
		for (i = 1; i <= nskips; i++)
			print "  " skipname[i] (skipwhy[i] == "" ? "" : ": " skipwhy[i])
	}
	bad = 0
	if (ci == "true") {
		for (i = 1; i <= nskips; i++) {
			if (allowed(skipname[i])) continue
			if (!bad) { print ""; print "CI: these tests must run in CI but were skipped (allow-list: hack/ci-allowed-skips.txt):" }
			bad++
			print "  " skipname[i] (skipwhy[i] == "" ? "" : ": " skipwhy[i])
		}
		for (i = 1; i <= nempty; i++) {
			if (allowed(empty[i])) continue
			if (!bad) { print ""; print "CI: these tests must run in CI but were skipped (allow-list: hack/ci-allowed-skips.txt):" }
			bad++
			print "  package " empty[i] ": reported ok but ran no test"
		}
	}
	print ""
	printf "%d passed, %d failed, %d skipped\n", passed, failed, skipped
	exit (failed > 0 || bad > 0) ? 1 : 0
}
' "$log"
