package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"

	"github.com/vz-shim/containerd-shim-vz/agent/sysinit"
	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// NetworkDir holds the files the shim bind-mounts into containers as
// /etc/resolv.conf, /etc/hosts and /etc/hostname (shim/network.go).
const NetworkDir = "/run/vz-agent/net"

// dhcpTimeout bounds the whole DHCP exchange, retries included. QEMU's user
// network answers at once; the bound is for a slow TCG guest.
const dhcpTimeout = 5 * time.Second

// Network is the VM's network as DHCP configured it.
type Network struct {
	Interface   string
	Addr        netip.Addr
	Nameservers []netip.Addr
	Search      []string
}

// network is the configured network, nil without one; the system service
// rewrites its hosts and hostname files when the shim names the VM.
var network struct {
	mu  sync.Mutex
	n   *Network
	dir string
}

// ConfigureNetwork configures the VM's first NIC by DHCP and writes the
// files of dir. Without a NIC it does nothing and returns nil, nil. When
// DHCP or the configuration fails the files are still written (localhost
// only, no nameserver): the shim bind-mounts them into every container of a
// VM with a NIC, and the containers must still run, without network. The
// error is the caller's to report.
func ConfigureNetwork(ctx context.Context, dir string) (*Network, error) {
	name, err := sysinit.FirstNIC()
	if err != nil || name == "" {
		return nil, err
	}
	n := &Network{Interface: name}
	start := time.Now()
	l, cerr := configureNIC(ctx, name)
	if cerr == nil {
		n.Addr, n.Nameservers = l.Addr, l.Nameservers
		if l.Domain != "" {
			n.Search = strings.Fields(l.Domain)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("network files: %w", err)
	}
	host, _ := os.Hostname()
	if err := writeNetworkFiles(dir, n, host); err != nil {
		return nil, err
	}
	network.mu.Lock()
	network.n, network.dir = n, dir
	network.mu.Unlock()
	if cerr != nil {
		return nil, cerr
	}
	log.G(ctx).WithFields(log.Fields{
		"interface": name, "address": l.Addr, "router": l.Router,
		"dns": l.Nameservers, "took": time.Since(start),
	}).Info("network configured by dhcp")
	return n, nil
}

// ConfigureDHCP is ConfigureNetwork for a VM restored from a template, in
// Setup: its NIC may still be coming (hot-plugged), and with d.Mac the NIC
// that has no such address yet takes it (VZ: the template's NIC keeps the
// template's address, which every restored VM would share, lease included).
func ConfigureDHCP(ctx context.Context, dir string, d *agentapi.Dhcp) error {
	var mac net.HardwareAddr
	if d.Mac != "" {
		var err error
		if mac, err = net.ParseMAC(d.Mac); err != nil || len(mac) != 6 {
			return fmt.Errorf("dhcp: mac %q: %w", d.Mac, errdefs.ErrInvalidArgument)
		}
	}
	// A VM with user networking has one NIC: the one the VMM gave this
	// address, or, while none has it, the first that shows up.
	deadline := time.Now().Add(hotplugWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("dhcp: listing NICs: %w", err)
		}
		if mac != nil && slices.ContainsFunc(links, func(l netlink.Link) bool { return bytes.Equal(l.Attrs().HardwareAddr, mac) }) {
			break
		}
		name, err := sysinit.FirstNIC()
		if err != nil {
			return err
		}
		if name != "" {
			if mac != nil {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return fmt.Errorf("dhcp: %s: %w", name, err)
				}
				if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
					return fmt.Errorf("dhcp: %s: setting mac %s: %w", name, mac, err)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dhcp: no NIC after %s: %w", hotplugWait, errdefs.ErrNotFound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err := ConfigureNetwork(ctx, dir)
	return err
}

func configureNIC(ctx context.Context, name string) (*sysinit.Lease, error) {
	if err := sysinit.LinkUp(name); err != nil {
		return nil, err
	}
	l, err := sysinit.DHCP(ctx, name, dhcpTimeout)
	if err != nil {
		return nil, err
	}
	if err := sysinit.ConfigureInterface(name, l); err != nil {
		return nil, err
	}
	return l, nil
}

// SetNetworkHostname rewrites the hosts and hostname files for hostname,
// after the system service set it. Without a network it does nothing.
func SetNetworkHostname(hostname string) error {
	network.mu.Lock()
	defer network.mu.Unlock()
	if network.n == nil {
		return nil
	}
	return writeNetworkFiles(network.dir, network.n, hostname)
}

// writeNetworkFiles writes resolv.conf, hosts and hostname. They are
// rewritten in place (no rename): containers bind-mount them, and a bind
// mount of a file keeps the inode it was made with.
func writeNetworkFiles(dir string, n *Network, hostname string) error {
	hostname = validHostname(hostname)
	files := []struct {
		name string
		data string
	}{
		{"resolv.conf", renderResolvConf(n)},
		{"hosts", renderHosts(n, hostname)},
		{"hostname", hostname + "\n"},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.data), 0o644); err != nil {
			return fmt.Errorf("network files: %w", err)
		}
	}
	return nil
}

// validHostname is hostname, or localhost for the kernel's "(none)" before
// anyone named the VM.
func validHostname(hostname string) string {
	if hostname == "" || hostname == "(none)" {
		return "localhost"
	}
	return hostname
}

func renderResolvConf(n *Network) string {
	var b strings.Builder
	b.WriteString("# Generated by vz-agent from DHCP.\n")
	for _, ns := range n.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(n.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(n.Search, " "))
	}
	return b.String()
}

func renderHosts(n *Network, hostname string) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	if hostname != "localhost" && n.Addr.IsValid() {
		fmt.Fprintf(&b, "%s\t%s\n", n.Addr, hostname)
	}
	return b.String()
}
