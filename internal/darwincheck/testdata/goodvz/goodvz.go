//go:build darwin && cgo

// Package goodvz uses vz correctly: darwincheck must pass it.
package goodvz

import (
	"github.com/Code-Hex/vz/v3"
)

func start(vm *vz.VirtualMachine) error {
	return vm.Start()
}

func socket(vm *vz.VirtualMachine, port uint32) (*vz.VirtioSocketConnection, error) {
	return vm.SocketDevices()[0].Connect(port)
}

var _, _ = start, socket
