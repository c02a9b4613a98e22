// Package vz runs a micro-VM with Apple's Virtualization.framework through
// github.com/Code-Hex/vz/v3 (vm.Machine on macOS hosts).
//
// The package is split so that almost all of it builds and is tested on any
// host: NewPlan turns a vm.Config into a Plan that holds every decision
// (command line, sizes, caching modes, MAC address, checks), and Machine
// runs the lifecycle (start, state watch, stop, dial) over a small
// hypervisor interface that the tests fake. The darwin files (build tags
// darwin && cgo) only execute a Plan with the vz API and adapt
// vz.VirtualMachine to that interface. They cannot be compiled off a Mac;
// `make darwin-check` type-checks them (DESIGN.md §8).
//
// The VM lives in the shim's own process: there is no VMM process, no pid,
// and nothing in StateDir; a dead shim leaves no VM behind.
package vz
