package shim

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestNetworkSpec(t *testing.T) {
	newSpec := func() *specs.Spec {
		return &specs.Spec{
			Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
			Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			}},
		}
	}
	nsTypes := func(s *specs.Spec) []specs.LinuxNamespaceType {
		var out []specs.LinuxNamespaceType
		for _, n := range s.Linux.Namespaces {
			out = append(out, n.Type)
		}
		return out
	}
	wantNS := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.UTSNamespace, specs.MountNamespace}

	t.Run("nic", func(t *testing.T) {
		s := newSpec()
		networkSpec(s, true)
		if got := nsTypes(s); !slices.Equal(got, wantNS) {
			t.Errorf("namespaces %v, want %v", got, wantNS)
		}
		if len(s.Mounts) != 4 {
			t.Fatalf("mounts %+v, want proc and three binds", s.Mounts)
		}
		for i, f := range []string{"resolv.conf", "hosts", "hostname"} {
			m := s.Mounts[i+1]
			if m.Destination != "/etc/"+f || m.Source != "/run/vz-agent/net/"+f || m.Type != "bind" ||
				!slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "rbind") {
				t.Errorf("mount %d: %+v", i+1, m)
			}
		}
	})

	t.Run("no nic", func(t *testing.T) {
		s := newSpec()
		networkSpec(s, false)
		if got := nsTypes(s); !slices.Equal(got, wantNS) {
			t.Errorf("namespaces %v, want %v", got, wantNS)
		}
		if len(s.Mounts) != 1 {
			t.Errorf("mounts %+v, want proc only", s.Mounts)
		}
	})

	t.Run("user mounts kept, network namespace path dropped", func(t *testing.T) {
		s := newSpec()
		s.Linux.Namespaces[1].Path = "/proc/1/ns/net"
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf/", Type: "bind", Source: "/mine"})
		networkSpec(s, true)
		// The VMM joined it: the container has the VM's network.
		if len(s.Linux.Namespaces) != 3 || slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace }) {
			t.Errorf("the network namespace must go: %+v", s.Linux.Namespaces)
		}
		var dsts []string
		for _, m := range s.Mounts {
			dsts = append(dsts, m.Destination)
			if m.Destination == "/etc/resolv.conf/" && m.Source != "/mine" {
				t.Errorf("user's resolv.conf replaced: %+v", m)
			}
		}
		if want := []string{"/proc", "/etc/resolv.conf/", "/etc/hosts", "/etc/hostname"}; !slices.Equal(dsts, want) {
			t.Errorf("destinations %v, want %v", dsts, want)
		}
	})

	t.Run("no linux section", func(t *testing.T) {
		s := &specs.Spec{}
		networkSpec(s, true)
		if len(s.Mounts) != 3 {
			t.Errorf("mounts %+v", s.Mounts)
		}
	})
}
