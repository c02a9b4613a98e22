#!/usr/bin/env bash
# Runs the Go tests verbosely into _output/test.log, then summarises them (hack/test-summary.sh),
# ending with "N passed, N failed, N skipped".
#
# Environment: PKGS (default ./...), TESTFLAGS (extra go test flags, e.g. "-run TestX"),
# CI=true (skips not in hack/ci-allowed-skips.txt fail the run).
set -uo pipefail

cd "$(dirname "$0")/.."
mkdir -p _output
log=_output/test.log

root_warning() {
	[ "$(id -u)" -eq 0 ] && return 0
	cat >&2 <<'TXT'

########################################################################################
##  WARNING: not running as root. Tests that need root (runc, mounts, VMs) will SKIP.  ##
##  CI runs as root: run `sudo make test` to see what CI sees.                         ##
########################################################################################

TXT
}

root_warning
# shellcheck disable=SC2086 # PKGS and TESTFLAGS are word lists
go test -race -count=1 -timeout 60m -v ${TESTFLAGS:-} ${PKGS:-./...} 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
root_warning
hack/test-summary.sh "$log" || rc=1
exit "$rc"
