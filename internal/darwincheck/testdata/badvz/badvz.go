//go:build darwin && cgo

// Package badvz calls a vz method that does not exist: darwincheck must
// fail on it.
package badvz

import "github.com/Code-Hex/vz/v3"

func start(vm *vz.VirtualMachine) error {
	return vm.StartNow()
}

var _ = start
