package network

import (
	"fmt"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Do runs fn with the calling thread in the network namespace at nsPath:
// the sockets fn makes belong to that namespace. The thread goes back to
// where it was before anything else runs on it.
func Do(nsPath string, fn func() error) error {
	return cnins.WithNetNSPath(nsPath, func(cnins.NetNS) error { return fn() })
}

// LoopbackUp sets lo of the namespace at nsPath up. A namespace the shim
// made has it down (the guest has its own); one CRI made has it up already.
func LoopbackUp(nsPath string) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo of %s: %w", nsPath, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo of %s up: %w", nsPath, err)
	}
	return nil
}
