//go:build linux

package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/netns"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/network"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// TestVMLaunchInNetNSAddNIC: Launch starts QEMU paused inside the configured network namespace;
// AddNIC plugs a tap-backed virtio-net NIC with the interface's MAC and MTU into a reserved
// slot before Start; slots run out; NICs cannot be added once the guest runs.
func TestVMLaunchInNetNSAddNIC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP real-VM network test: network namespaces need root")
	}
	cfg := testConfig(t)
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
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	a, err := network.Plug(context.Background(), ns.GetPath())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Unplug(context.Background())

	cfg.NetNS = ns.GetPath()
	cfg.NICSlots = 1
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eth0 := a.Config.Interfaces[0]
	nic := vm.NIC{ID: "net0", MAC: eth0.MAC, MTU: eth0.MTU, Tap: a.Taps[0]}
	if err := m.AddNIC(ctx, nic); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("AddNIC before Launch: %v, want failed precondition", err)
	}
	if err := m.Launch(ctx); err != nil {
		t.Fatal(err)
	}
	// Compare inodes: readlink of a bind-mounted namespace file is no use.
	var want, got, self unix.Stat_t
	if err := unix.Stat(ns.GetPath(), &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join("/proc", itoa(m.Pid()), "ns", "net"), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino || got.Dev != want.Dev {
		t.Errorf("QEMU's network namespace is inode %d, want the configured one, %d", got.Ino, want.Ino)
	}
	// The thread that forked QEMU went back: the whole process, main thread included, stays
	// where it was.
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, task := range tasks {
		if err := unix.Stat(task, &self); err == nil && self.Ino == want.Ino {
			t.Errorf("%s is still in the VM's network namespace", task)
		}
	}
	if err := m.AddNIC(ctx, nic); err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	nic2 := nic
	nic2.ID = "net1"
	if err := m.AddNIC(ctx, nic2); !errdefs.IsResourceExhausted(err) {
		t.Errorf("AddNIC past the slots: %v, want resource exhausted", err)
	}
	ret, err := m.qmp.execute(ctx, "query-rx-filter", map[string]any{"name": "nic-net0"})
	if err != nil || !strings.Contains(string(ret), eth0.MAC.String()) {
		t.Errorf("query-rx-filter: %s %v, want MAC %s", ret, err, eth0.MAC)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.AddNIC(ctx, nic2); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("AddNIC after Start: %v, want failed precondition", err)
	}
	// The guest finds the NIC by its MAC and configures it (the agent's static network).
	c := ttrpc.NewClient(waitAgent(t, m))
	defer c.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	sys := agentapi.NewSystemClient(c)
	_, err = sys.Setup(sctx, &agentapi.SetupRequest{Network: &agentapi.Network{
		Interfaces: []*agentapi.Interface{{Mac: "02:00:00:00:00:99", Name: "eth9"}},
	}})
	if err == nil || !strings.Contains(err.Error(), "no NIC with mac 02:00:00:00:00:99") {
		t.Errorf("Setup with a MAC the guest lacks: %v", err)
	}
	_, err = sys.Setup(sctx, &agentapi.SetupRequest{Network: &agentapi.Network{
		Interfaces: []*agentapi.Interface{{Mac: eth0.MAC.String(), Name: "eth7", Mtu: 1400, Addresses: []string{"10.97.1.2/24"}}},
	}})
	if err != nil {
		t.Errorf("the guest did not configure the NIC: %v", err)
	}
}
