// Package integration holds the end-to-end tests of containerd-shim-vz: a private containerd
// 2.4 (built by `make containerd`), images made by the tests themselves, and every scenario run
// with the runc shim as the baseline and with our shim (`io.containerd.vz.v1`).
//
// Run as root after `make containerd` (and `make build guest` for the vz subtests):
//
//	go test -count=1 -v ./integration/
//	go test -count=1 -v -run 'TestRunEcho/runc' ./integration/
//	go test -run '^$' -bench . -benchtime 5x ./integration/
//
// Flags: -vztest.keep keeps the temporary directory (containerd's root, state, config and log).
package integration
