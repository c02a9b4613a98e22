package integration

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Addresses of the namespace TestNetworkJoinNamespace prepares as CNI would: a veth pair
// between the test's namespace (joinHost) and the task's (joinGuest).
var (
	joinHost  = mustCIDR("10.99.0.1/24")
	joinGuest = mustCIDR("10.99.0.2/24")
	joinMAC   = net.HardwareAddr{0x02, 0x42, 0x0a, 0x63, 0x00, 0x02}
)

func mustCIDR(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// prepareNetNS makes a network namespace with one end of a veth pair in it (named ifname, with
// joinGuest, joinMAC, an MTU of 1400 and a default route via joinHost) and the other end, with
// joinHost, in the test's namespace. It is removed when the test ends.
func prepareNetNS(t *testing.T, ifname string) string {
	t.Helper()
	dir, err := os.MkdirTemp(tempBase(), "vzns-")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNetNS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Remove(); err != nil {
			t.Errorf("removing the test's namespace: %v", err)
		}
		os.RemoveAll(dir)
	})
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vzjoin0", MTU: 1400}, PeerName: "vzjoin1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	host, err := netlink.LinkByName("vzjoin0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(host, joinHost); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("vzjoin1")
	if err != nil {
		t.Fatal(err)
	}
	nsh, err := vnetns.GetFromPath(ns.GetPath())
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	if err := netlink.LinkSetNsFd(peer, int(nsh)); err != nil {
		t.Fatal(err)
	}
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	peer, err = nh.LinkByName("vzjoin1")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return nh.LinkSetName(peer, ifname) },
		func() error { return nh.LinkSetHardwareAddr(peer, joinMAC) },
		func() error { return nh.AddrAdd(peer, joinGuest) },
		func() error { return nh.LinkSetUp(peer) },
		func() error {
			return nh.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: joinHost.IP})
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	return ns.GetPath()
}

// TestNetworkJoinNamespace: a task whose spec names a network namespace (ctr run --with-ns, as
// CRI and nerdctl give one) runs its VM there: the guest has the interface's name, address, MAC
// and MTU and its default route, the test's side of the veth reaches a server in the container
// and the container reaches one on the test's side. Afterwards the namespace holds nothing of
// the shim's (no tap, no qdisc) and still exists: it is not the shim's to remove.
func TestNetworkJoinNamespace(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	nsPath := prepareNetNS(t, "ceth7")
	port := listenTCP(t, joinHost.IP.String()+":0", "from-the-test-side")

	id := h.newID("join")
	h.ctrOK(h.runArgs(append(detached(), "--with-ns", "network:"+nsPath), id, webServer("page-join")...)...)
	links := h.execOK(id, "links", "ip", "-o", "link", "show", "ceth7")
	if !strings.Contains(links, "link/ether "+joinMAC.String()) || !strings.Contains(links, "mtu 1400") {
		t.Errorf("guest interface: %q, want ceth7 with %s and mtu 1400", links, joinMAC)
	}
	if addrs := h.execOK(id, "addrs", "ip", "-4", "-o", "addr", "show", "ceth7"); !strings.Contains(addrs, "inet "+joinGuest.IPNet.String()) {
		t.Errorf("guest addresses: %q, want %s", addrs, joinGuest.IPNet)
	}
	if route := h.execOK(id, "route", "ip", "route", "show", "default"); !strings.Contains(route, "via "+joinHost.IP.String()+" dev ceth7") {
		t.Errorf("guest default route: %q, want via %s dev ceth7", route, joinHost.IP)
	}
	if got, err := httpGet("http://" + joinGuest.IP.String() + "/"); err != nil || strings.TrimSpace(got) != "page-join" {
		t.Errorf("test side to the container: %q, %v", got, err)
	}
	url := "http://" + net.JoinHostPort(joinHost.IP.String(), itoa(port)) + "/"
	if got := h.execOK(id, "fetch", "wget", "-q", "-O", "-", url); got != "from-the-test-side" {
		t.Errorf("container to the test side (%s): %q", url, got)
	}
	h.killAndRemove(id)

	nsh, err := vnetns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("the namespace must outlive the task: %v", err)
	}
	defer nsh.Close()
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	links2, _ := nh.LinkList()
	for _, l := range links2 {
		if strings.HasPrefix(l.Attrs().Name, "vztap") {
			t.Errorf("tap %s left in the namespace", l.Attrs().Name)
		}
		qs, _ := nh.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "ingress" {
				t.Errorf("ingress qdisc left on %s", l.Attrs().Name)
			}
		}
	}
	if _, err := os.Stat(filepath.Clean(nsPath)); err != nil {
		t.Errorf("namespace file: %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
