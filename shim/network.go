package shim

import (
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// guestNetDir is where the agent writes the VM's resolv.conf, hosts and
// hostname (agent.NetworkDir; the shim does not import the agent package).
const guestNetDir = "/run/vz-agent/net"

// networkFiles are the container files that come from the agent's.
var networkFiles = []string{"resolv.conf", "hosts", "hostname"}

// networkSpec adjusts the container's spec for the VM's network: the
// container shares the VM's network namespace (its "network" namespace is
// dropped: the VM's is the one the spec asked for, or a new one), and /etc/resolv.conf, /etc/hosts and
// /etc/hostname come from the agent's files (bind mounts of
// /run/vz-agent/net/{resolv.conf,hosts,hostname}, read-only) when the VM
// has a NIC. A mount the spec already has at one of those destinations is
// the user's choice and is kept.
func networkSpec(spec *specs.Spec, withNIC bool) {
	// The VM is the container's sandbox: a network namespace of its own
	// inside it would have no interface but lo.
	if spec.Linux != nil {
		ns := spec.Linux.Namespaces[:0]
		for _, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				continue
			}
			ns = append(ns, n)
		}
		spec.Linux.Namespaces = ns
	}
	if !withNIC {
		return
	}
	for _, f := range networkFiles {
		dst := "/etc/" + f
		if hasMountAt(spec.Mounts, dst) {
			continue
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: dst,
			Type:        "bind",
			Source:      guestNetDir + "/" + f,
			Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
}

func hasMountAt(mounts []specs.Mount, dst string) bool {
	for _, m := range mounts {
		if path.Clean(m.Destination) == dst {
			return true
		}
	}
	return false
}
