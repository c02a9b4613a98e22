package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// vzNetGateway is the host as QEMU's user network shows it to the guest: connections to it reach
// the host's loopback. vzNetGuest is the address its DHCP server hands out, vzNetDNS its resolver.
const (
	vzNetGateway = "10.0.2.2"
	vzNetGuest   = "10.0.2.15"
	vzNetDNS     = "10.0.2.3"
)

// TestNetworkVZOnly: with network = "user", a VM's container reaches the host through the VM's
// NIC behind QEMU's NAT, configured by the agent with DHCP, and sees the agent's resolv.conf, hosts and hostname. vz only: a runc
// container's network is the host's own, there is nothing of this to check (the hostname is
// checked for both runtimes by TestNetworkHostname).
func TestNetworkVZOnly(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	h.vzConfig = h.d.vzUser

	const page = "hello from the host over the VM's NIC"
	port := listenTCP(t, "127.0.0.1:0", page)

	const hostname = "vz-net-test"
	id := h.newID("net")
	// No wget -T: Debian's busybox 1.35 wget segfaults with it.
	script := fmt.Sprintf(`wget -q -O - http://%s:%d/; echo; echo '==resolv'; cat /etc/resolv.conf; `+
		`echo '==hostname'; hostname; echo '==etc-hostname'; cat /etc/hostname; echo '==hosts'; cat /etc/hosts; `+
		`echo '==ifconfig'; ifconfig`, vzNetGateway, port)
	r := h.ctr(h.runArgs(h.rmFlags("--hostname", hostname), id, "sh", "-c", script)...)
	if r.code != 0 {
		t.Fatalf("unexpected exit status: %s", r)
	}
	sec := sections(r.stdout)
	if got := strings.TrimSpace(sec[""]); got != page {
		t.Errorf("wget http://%s:%d/ (the host's 127.0.0.1): got %q, want %q\n%s", vzNetGateway, port, got, page, r)
	}
	if !strings.Contains(sec["resolv"], "nameserver "+vzNetDNS+"\n") {
		t.Errorf("/etc/resolv.conf without nameserver %s:\n%s", vzNetDNS, sec["resolv"])
	}
	if got := strings.TrimSpace(sec["hostname"]); got != hostname {
		t.Errorf("hostname %q, want %q", got, hostname)
	}
	if got := strings.TrimSpace(sec["etc-hostname"]); got != hostname {
		t.Errorf("/etc/hostname %q, want %q", got, hostname)
	}
	if !hasHostsEntry(sec["hosts"], vzNetGuest, hostname) || !hasHostsEntry(sec["hosts"], "127.0.0.1", "localhost") {
		t.Errorf("/etc/hosts without %s %s and 127.0.0.1 localhost:\n%s", vzNetGuest, hostname, sec["hosts"])
	}
	if !strings.Contains(sec["ifconfig"], "inet addr:"+vzNetGuest+" ") {
		t.Errorf("ifconfig does not show %s:\n%s", vzNetGuest, sec["ifconfig"])
	}
	t.Logf("ctr run --rm with network took %s", r.elapsed.Round(time.Millisecond))
}

// TestNetworkHostname: the container's hostname is the one ctr run --hostname gave.
func TestNetworkHostname(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("hostname")
		r := h.ctr(h.runArgs(h.rmFlags("--hostname", "named-"+h.rt.name), id, "hostname")...)
		if r.code != 0 {
			t.Fatalf("unexpected exit status: %s", r)
		}
		if got := strings.TrimSpace(r.stdout); got != "named-"+h.rt.name {
			t.Errorf("hostname %q, want %q", got, "named-"+h.rt.name)
		}
	})
}

// sections splits output at lines "==name" into a map; what comes before the first is "".
func sections(out string) map[string]string {
	m := map[string]string{}
	name := ""
	for _, line := range strings.SplitAfter(out, "\n") {
		if n, ok := strings.CutPrefix(strings.TrimSpace(line), "=="); ok {
			name = n
			continue
		}
		m[name] += line
	}
	return m
}

// hasHostsEntry tells whether an /etc/hosts text maps addr to name.
func hasHostsEntry(hosts, addr, name string) bool {
	for _, line := range strings.Split(hosts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == addr {
			for _, n := range f[1:] {
				if n == name {
					return true
				}
			}
		}
	}
	return false
}
