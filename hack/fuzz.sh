#!/usr/bin/env bash
# Runs every fuzz target (go test -fuzz) for FUZZTIME each, one after the other
# (go test fuzzes one target of one package at a time), and prints a line per
# target: how many inputs it ran and whether it found anything. A finding fails
# the run and is left in the package's testdata/fuzz/<Target>/ by go test.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
# package target
targets=(
	"./transport FuzzMuxWire"
	"./api/stdio FuzzReadHeader"
	"./api/stdio FuzzReadAck"
	"./shim FuzzGuestEvent"
	"./agent FuzzTransformMount"
	"./snapshotter/ext4 FuzzConvertLayer"
)
fail=0
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	log=$(mktemp)
	# A short run must fuzz, not spend its time minimizing what it found.
	if "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 50x "$pkg" >"$log" 2>&1; then
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
		printf 'fuzz %-22s %-20s %s, %s inputs, no finding\n' "$pkg" "$name" "$FUZZTIME" "${execs:-?}"
	elif ! grep -q 'Failing input written to' "$log" && grep -qx '    context deadline exceeded' "$log"; then
		# go test's fuzz coordinator reports its own -fuzztime deadline when an input is still
		# running at that moment (FuzzConvertLayer's can take a while): no input failed and none
		# was written, so it is no finding.
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
		printf 'fuzz %-22s %-20s %s, %s inputs, no finding (stopped at its deadline with an input running)\n' "$pkg" "$name" "$FUZZTIME" "${execs:-?}"
	else
		printf 'fuzz %-22s %-20s FAILED:\n' "$pkg" "$name"
		tail -30 "$log"
		fail=1
	fi
	rm -f "$log"
done
exit $fail
