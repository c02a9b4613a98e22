package shim

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/network"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// netStateDir holds the network namespaces the shim makes and the state
// that lets a later `shim delete` undo a dead shim's network.
const netStateDir = "/run/containerd-vz/net"

// nicSlots is how many NICs a VM in a network namespace can get.
const nicSlots = 4

// netKey names a task's network state: the bundle path is unique among the
// tasks of every containerd on the host, and known to `shim delete`.
func netKey(bundle string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(bundle)))
	return hex.EncodeToString(sum[:10])
}

// taskNet is the host side of a task VM's network.
type taskNet struct {
	// userNAT: one NIC behind QEMU's user-mode NAT, configured by DHCP.
	userNAT bool
	// sandbox is the VM's network namespace (nil: the VMM stays in the
	// shim's); attach is what Plug made there.
	sandbox *network.Sandbox
	attach  *network.Attachment
	key     string
}

// newTaskNet decides where the VM's network comes from:
//   - the spec names a network namespace (CRI, nerdctl, ctr --with-ns): the
//     VMM runs there and the VM gets its interfaces;
//   - a new namespace with hooks that run at create (nerdctl's CNI hook):
//     an empty namespace of the shim's, which the hooks fill, as runc's
//     would be;
//   - otherwise the runtime's network mode: "cni" (a namespace of the
//     shim's with CNI's network), "user" (QEMU's NAT), "none".
func newTaskNet(ctx context.Context, bundle, namespace, id string, hs hostSpec, opts Options) (*taskNet, error) {
	n := &taskNet{key: netKey(bundle)}
	var err error
	switch {
	case hs.netnsPath != "":
		n.sandbox, err = network.JoinSandbox(netStateDir, n.key, hs.netnsPath)
	case hs.hooks.setsUpNetwork() && hs.netnsNew:
		n.sandbox, err = network.NewSandbox(ctx, netStateDir, n.key, "", nil)
	case opts.Network == networkCNI:
		c := &network.CNI{ConfDir: opts.CNIConfDir, Network: opts.CNINetwork, BinDirs: cniBinDirs(opts.CNIBinDir)}
		if c.ConfDir == "" {
			c.ConfDir = "/etc/cni/net.d"
		}
		n.sandbox, err = network.NewSandbox(ctx, netStateDir, n.key, namespace+"-"+id, c)
	case opts.Network == networkUser:
		n.userNAT = true
	}
	if err != nil {
		return nil, err
	}
	return n, nil
}

// cniBinDirs is where the plugins are: the option's directory, else the
// usual /opt/cni/bin and then the plugins installed with the shim
// (<prefix>/libexec/containerd-vz/cni, or _output/cni/bin of a checkout).
func cniBinDirs(opt string) []string {
	if opt != "" {
		return filepath.SplitList(opt)
	}
	dirs := []string{"/opt/cni/bin"}
	if self, err := os.Executable(); err == nil {
		base := filepath.Dir(filepath.Dir(self))
		dirs = append(dirs, filepath.Join(base, "libexec", "containerd-vz", "cni"), filepath.Join(base, "cni", "bin"))
	}
	return dirs
}

// configure sets the VM's network devices in cfg.
func (n *taskNet) configure(cfg *vm.Config) {
	cfg.Network = n.userNAT
	if n.sandbox != nil {
		cfg.NetNS = n.sandbox.Path
		cfg.NICSlots = nicSlots
		// No DHCP at boot: the agent gets the addresses in Setup.
		cfg.KernelArgs = append(cfg.KernelArgs, "vz.net=static")
	}
}

// plug gives the launched VM a NIC for each interface of its namespace.
func (n *taskNet) plug(ctx context.Context, m vm.Launcher) error {
	if n.sandbox == nil {
		return nil
	}
	a, err := n.sandbox.Plug(ctx)
	if err != nil {
		return err
	}
	n.attach = a
	// The VMM holds its own copies of the taps from here on.
	defer a.Close()
	for i, iface := range a.Config.Interfaces {
		nic := vm.NIC{ID: fmt.Sprintf("net%d", i), MAC: iface.MAC, MTU: iface.MTU, Tap: a.Taps[i]}
		if err := m.AddNIC(ctx, nic); err != nil {
			return fmt.Errorf("NIC for %s: %w", iface.Name, err)
		}
	}
	log.G(ctx).WithField("netns", n.sandbox.Path).WithField("nics", len(a.Config.Interfaces)).Info("network plugged")
	return nil
}

// guest is the static network configuration for the agent, nil without.
func (n *taskNet) guest() *agentapi.Network {
	if n.attach == nil {
		return nil
	}
	c := n.attach.Config
	g := &agentapi.Network{Ipv6Disabled: c.IPv6Disabled}
	for _, i := range c.Interfaces {
		gi := &agentapi.Interface{Mac: i.MAC.String(), Name: i.Name, Mtu: uint32(i.MTU)}
		for _, a := range i.Addrs {
			gi.Addresses = append(gi.Addresses, a.String())
		}
		g.Interfaces = append(g.Interfaces, gi)
	}
	for _, r := range c.Routes {
		gr := &agentapi.Route{Interface: r.Interface, Scope: uint32(r.Scope), Metric: uint32(r.Metric)}
		if r.Dst.IsValid() {
			gr.Destination = r.Dst.String()
		}
		if r.Gateway.IsValid() {
			gr.Gateway = r.Gateway.String()
		}
		if r.Src.IsValid() {
			gr.Source = r.Src.String()
		}
		g.Routes = append(g.Routes, gr)
	}
	dns := n.sandbox.DNS()
	g.Nameservers, g.Search = dns.Nameservers, dns.Search
	if len(g.Nameservers) == 0 {
		g.Nameservers, g.Search = hostResolvers("/etc/resolv.conf")
	}
	return g
}

// hostResolvers are the host's nameservers a VM can reach: not the
// loopback ones (a local resolver is the host's, not the VM's).
func hostResolvers(path string) (servers, search []string) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if a, err := netip.ParseAddr(fields[1]); err == nil && !a.IsLoopback() {
				servers = append(servers, a.String())
			}
		case "search":
			search = fields[1:]
		}
	}
	return servers, search
}

// teardown removes the taps and redirects, CNI's network and the
// namespace the shim made. After the VM is gone.
func (n *taskNet) teardown(ctx context.Context) error {
	if n == nil || n.sandbox == nil {
		return nil
	}
	if n.attach != nil {
		n.attach.Close()
	}
	// CNI's DEL after its ADD, not during it.
	_ = n.sandbox.Wait(context.WithoutCancel(ctx))
	return network.Teardown(ctx, netStateDir, n.key)
}

// cleanupNetwork is teardown for a shim that died (`shim delete`).
func cleanupNetwork(ctx context.Context, bundle string) error {
	return network.Teardown(ctx, netStateDir, netKey(bundle))
}

// hasNetwork tells whether the guest gets NICs (and so the agent's network
// files).
func (n *taskNet) hasNetwork() bool { return n.userNAT || n.sandbox != nil }

// sandboxPath is the VM's network namespace, "" without one.
func (n *taskNet) sandboxPath() string {
	if n.sandbox == nil {
		return ""
	}
	return n.sandbox.Path
}

// loopbackIn is how the port forwarder of the VM's network namespace
// listens there: with its lo up, once.
func loopbackIn(ctx context.Context, ns string) func(fn func() error) error {
	var once sync.Once
	return func(fn func() error) error {
		once.Do(func() {
			if err := network.LoopbackUp(ns); err != nil {
				log.G(ctx).WithError(err).Warn("the container's ports cannot reach its namespace's loopback")
			}
		})
		return network.Do(ns, fn)
	}
}
