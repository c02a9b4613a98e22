// Package network gives a micro-VM the network of a Linux network namespace:
// it finds the namespace's interfaces, addresses and routes, joins each
// interface to a tap device with tc redirects (the tap's file goes to the
// VMM, the guest NIC takes the interface's MAC and MTU), and runs CNI to make
// a namespace with a network when the task has none (DESIGN.md §9).
package network

import (
	"net"
	"net/netip"
)

// Interface is one interface of the namespace and its twin in the guest.
type Interface struct {
	// Name is the interface's name in the namespace (eth0).
	Name string
	MAC  net.HardwareAddr
	MTU  int
	// Addrs are its global addresses.
	Addrs []netip.Prefix
	// Tap is the name of the tap device that carries its traffic to and
	// from the VM.
	Tap string
}

// Route is one route of the namespace's main table.
type Route struct {
	Dst       netip.Prefix // invalid: the default route
	Gateway   netip.Addr
	Interface string // Interface.Name
	Scope     uint8
	Metric    int
	Src       netip.Addr
}

// Config is the network of a namespace as the guest must see it.
type Config struct {
	Interfaces   []Interface
	Routes       []Route
	IPv6Disabled bool
	// Nameservers and Search come from CNI's result, when it has DNS.
	Nameservers []string
	Search      []string
}
