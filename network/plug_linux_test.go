//go:build linux

package network

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// testNS makes a network namespace holding what CNI would have left there: eth0 (one end of a
// veth pair whose other end, peer0, is in the same namespace) with an address, an MTU of 1450
// and a default route. Everything is inside the namespace the test made, so no address of it
// is ever seen by the host. It returns the namespace and a netlink handle in it.
func testNS(t *testing.T) (string, *netlink.Handle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	ns, err := netns.NewNetNS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	nsh, err := vnetns.GetFromPath(ns.GetPath())
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1450}, PeerName: "peer0"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.97.0.5/24")
	for _, step := range []func() error{
		func() error { return h.AddrAdd(eth0, addr) },
		func() error { return h.LinkSetUp(eth0) },
		func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.97.0.1")})
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	return ns.GetPath(), h
}

func ingressFilters(t *testing.T, h *netlink.Handle, name string) (qdisc bool, redirects []int) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	qs, _ := h.QdiscList(l)
	for _, q := range qs {
		qdisc = qdisc || q.Type() == "ingress"
	}
	fs, _ := h.FilterList(l, ingressHandle)
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
					redirects = append(redirects, m.Ifindex)
				}
			}
		}
	}
	return qdisc, redirects
}

func TestPlugUnplug(t *testing.T) {
	nsPath, h := testNS(t)
	ctx := context.Background()
	a, err := Plug(ctx, nsPath)
	if err != nil {
		t.Fatal(err)
	}
	// peer0 is a veth with a MAC too: every interface but lo gets a tap.
	if len(a.Config.Interfaces) != 2 || len(a.Taps) != 2 {
		t.Fatalf("interfaces %+v taps %d: want eth0 and peer0", a.Config.Interfaces, len(a.Taps))
	}
	var eth0 Interface
	for _, i := range a.Config.Interfaces {
		if i.Name == "eth0" {
			eth0 = i
		}
	}
	l, _ := h.LinkByName("eth0")
	if eth0.MTU != 1450 || eth0.MAC.String() != l.Attrs().HardwareAddr.String() || len(eth0.Addrs) != 1 || eth0.Addrs[0].String() != "10.97.0.5/24" {
		t.Errorf("eth0 as found: %+v", eth0)
	}
	var def *Route
	for i, r := range a.Config.Routes {
		if !r.Dst.IsValid() {
			def = &a.Config.Routes[i]
		}
	}
	if def == nil || def.Gateway.String() != "10.97.0.1" || def.Interface != "eth0" {
		t.Errorf("routes %+v: want the default via 10.97.0.1 dev eth0 (and not the kernel's subnet route)", a.Config.Routes)
	}
	tap, err := h.LinkByName(eth0.Tap)
	if err != nil {
		t.Fatalf("tap %s: %v", eth0.Tap, err)
	}
	if tap.Attrs().MTU != 1450 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap %s: mtu %d flags %v, want 1450 and up", eth0.Tap, tap.Attrs().MTU, tap.Attrs().Flags)
	}
	if q, r := ingressFilters(t, h, "eth0"); !q || len(r) != 1 || r[0] != tap.Attrs().Index {
		t.Errorf("eth0: ingress %v redirects %v, want one to %s (%d)", q, r, eth0.Tap, tap.Attrs().Index)
	}
	if q, r := ingressFilters(t, h, eth0.Tap); !q || len(r) != 1 || r[0] != l.Attrs().Index {
		t.Errorf("%s: ingress %v redirects %v, want one to eth0", eth0.Tap, q, r)
	}

	if err := a.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if q, _ := ingressFilters(t, h, "eth0"); q {
		t.Error("ingress qdisc left on eth0")
	}
	links, _ := h.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, TapPrefix) {
			t.Errorf("tap %s left", l.Attrs().Name)
		}
	}
	if len(a.Taps) != 0 {
		t.Error("Unplug left the tap files open")
	}
}

// A tap is not persistent: it vanishes with the last open file, so a VMM and shim that die
// leave none behind.
func TestTapGoesWithItsFile(t *testing.T) {
	nsPath, h := testNS(t)
	a, err := Plug(context.Background(), nsPath)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	links, _ := h.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, TapPrefix) {
			t.Errorf("tap %s outlived its file", l.Attrs().Name)
		}
	}
	if err := UnplugNS(context.Background(), nsPath, []string{"eth0", "peer0"}); err != nil {
		t.Fatal(err)
	}
	if q, _ := ingressFilters(t, h, "eth0"); q {
		t.Error("UnplugNS left the ingress qdisc on eth0")
	}
}

func TestSandboxJoinTeardown(t *testing.T) {
	nsPath, h := testNS(t)
	ctx := context.Background()
	state := t.TempDir()
	s, err := JoinSandbox(state, "k1", nsPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Plug(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.Close() // as a dead VMM would
	// A shim that died: only the state file is left to go by.
	if err := Teardown(ctx, state, "k1"); err != nil {
		t.Fatal(err)
	}
	if q, _ := ingressFilters(t, h, "eth0"); q {
		t.Error("Teardown left the ingress qdisc on eth0")
	}
	if _, err := os.Stat(nsPath); err != nil {
		t.Errorf("Teardown removed a namespace it did not make: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "k1.json")); !os.IsNotExist(err) {
		t.Errorf("state file: %v, want gone", err)
	}
	if err := Teardown(ctx, state, "k1"); err != nil {
		t.Errorf("a second Teardown: %v", err)
	}
}

func TestSandboxOwnedTeardown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	ctx := context.Background()
	state := t.TempDir()
	s, err := NewSandbox(ctx, state, "k2", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vnetns.GetFromPath(s.Path); err != nil {
		t.Fatalf("namespace %s: %v", s.Path, err)
	}
	if err := Teardown(ctx, state, "k2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Path); !os.IsNotExist(err) {
		t.Errorf("namespace %s: %v, want removed", s.Path, err)
	}
}

func TestCNIConfList(t *testing.T) {
	dir := t.TempDir()
	// The built-in default when the directory does not define it.
	l, err := CNI{ConfDir: dir}.confList()
	if err != nil || l.Name != DefaultNetwork || len(l.Plugins) != 3 {
		t.Fatalf("default: %v %+v", err, l)
	}
	own := `{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge","bridge":"b1"}]}`
	os.WriteFile(filepath.Join(dir, "10-mine.conflist"), []byte(own), 0o644)
	if l, err = (CNI{ConfDir: dir, Network: "mine"}).confList(); err != nil || l.Name != "mine" {
		t.Errorf("named: %v %+v", err, l)
	}
	if _, err := (CNI{ConfDir: dir, Network: "other"}).confList(); err == nil || !strings.Contains(err.Error(), "other") {
		t.Errorf("unknown network: %v", err)
	}
	// A directory's own "vz" network wins over the built-in one.
	os.WriteFile(filepath.Join(dir, "20-vz.conflist"), []byte(strings.Replace(own, "mine", "vz", 1)), 0o644)
	if l, err = (CNI{ConfDir: dir}).confList(); err != nil || len(l.Plugins) != 1 {
		t.Errorf("vz from the directory: %v %+v", err, l)
	}
}
