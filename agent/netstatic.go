package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// ConfigureStatic configures the VM's NICs as the shim found their twins in
// the VM's network namespace on the host: each NIC (found by its MAC
// address) is renamed to its twin's name and gets its MTU and addresses,
// then the routes are added. It writes the network files of dir like
// ConfigureNetwork.
func ConfigureStatic(ctx context.Context, dir string, n *agentapi.Network) error {
	byMAC, err := linksByMAC(n.Interfaces)
	if err != nil {
		return err
	}
	if n.Ipv6Disabled {
		if err := writeSysctl("net.ipv6.conf.all.disable_ipv6", "1"); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	var first netip.Addr
	for _, i := range n.Interfaces {
		mac, err := net.ParseMAC(i.Mac)
		if err != nil {
			return fmt.Errorf("interface %s: mac %q: %w", i.Name, i.Mac, errdefs.ErrInvalidArgument)
		}
		l, ok := byMAC[mac.String()]
		if !ok {
			return fmt.Errorf("interface %s: no NIC with mac %s: %w", i.Name, mac, errdefs.ErrNotFound)
		}
		if err := configureLink(l, i); err != nil {
			return fmt.Errorf("interface %s: %w", i.Name, err)
		}
		for _, a := range i.Addresses {
			if p, err := netip.ParsePrefix(a); err == nil && !first.IsValid() && p.Addr().Is4() {
				first = p.Addr()
			}
		}
	}
	for _, r := range n.Routes {
		if err := addRoute(r); err != nil {
			return fmt.Errorf("route %s via %s dev %s: %w", orDefault(r.Destination), r.Gateway, r.Interface, err)
		}
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("network files: %w", err)
	}
	cfg := &Network{Addr: first, Search: n.Search}
	if len(n.Interfaces) > 0 {
		cfg.Interface = n.Interfaces[0].Name
	}
	for _, s := range n.Nameservers {
		if a, err := netip.ParseAddr(s); err == nil {
			cfg.Nameservers = append(cfg.Nameservers, a)
		}
	}
	host, _ := os.Hostname()
	if err := writeNetworkFiles(dir, cfg, host); err != nil {
		return err
	}
	network.mu.Lock()
	network.n, network.dir = cfg, dir
	network.mu.Unlock()
	log.G(ctx).WithFields(log.Fields{"interfaces": len(n.Interfaces), "routes": len(n.Routes), "address": first}).Info("network configured statically")
	return nil
}

func configureLink(l netlink.Link, i *agentapi.Interface) error {
	if i.Name != "" && i.Name != l.Attrs().Name {
		// A name is changed only while the link is down.
		if err := netlink.LinkSetDown(l); err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, i.Name); err != nil {
			return fmt.Errorf("rename %s: %w", l.Attrs().Name, err)
		}
	}
	if i.Mtu > 0 && int(i.Mtu) != l.Attrs().MTU {
		if err := netlink.LinkSetMTU(l, int(i.Mtu)); err != nil {
			return fmt.Errorf("mtu %d: %w", i.Mtu, err)
		}
	}
	for _, a := range i.Addresses {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("address %q: %w", a, errdefs.ErrInvalidArgument)
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	return netlink.LinkSetUp(l)
}

func addRoute(r *agentapi.Route) error {
	l, err := netlink.LinkByName(r.Interface)
	if err != nil {
		return err
	}
	rt := &netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.Scope(r.Scope), Priority: int(r.Metric)}
	if r.Destination != "" {
		_, dst, err := net.ParseCIDR(r.Destination)
		if err != nil {
			return errdefs.ErrInvalidArgument
		}
		rt.Dst = dst
	}
	if r.Gateway != "" {
		if rt.Gw = net.ParseIP(r.Gateway); rt.Gw == nil {
			return errdefs.ErrInvalidArgument
		}
	}
	if r.Source != "" {
		rt.Src = net.ParseIP(r.Source)
	}
	if rt.Dst == nil && rt.Gw != nil && rt.Gw.To4() == nil {
		rt.Family = netlink.FAMILY_V6
	}
	return netlink.RouteAdd(rt)
}

func orDefault(dst string) string {
	if dst == "" {
		return "default"
	}
	return dst
}

// SetSysctls writes namespaced kernel parameters (net.*) of the VM.
func SetSysctls(sysctls map[string]string) error {
	for k, v := range sysctls {
		if !strings.HasPrefix(k, "net.") || strings.Contains(k, "..") || strings.ContainsAny(k, "/") {
			return fmt.Errorf("sysctl %q: only net.* parameters are set in the VM: %w", k, errdefs.ErrInvalidArgument)
		}
		if err := writeSysctl(k, v); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}

func writeSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return os.WriteFile(p, []byte(value), 0o644)
}

// linksByMAC maps the guest's NICs by MAC address, once every NIC of ifaces
// is there or hotplugWait passed: NICs hot-plugged into a running VM (one
// restored from a template) appear a moment after the shim added them.
func linksByMAC(ifaces []*agentapi.Interface) (map[string]netlink.Link, error) {
	deadline := time.Now().Add(hotplugWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing NICs: %w", err)
		}
		byMAC := map[string]netlink.Link{}
		for _, l := range links {
			byMAC[l.Attrs().HardwareAddr.String()] = l
		}
		all := true
		for _, i := range ifaces {
			if mac, err := net.ParseMAC(i.Mac); err == nil && byMAC[mac.String()] == nil {
				all = false
			}
		}
		if all || time.Now().After(deadline) {
			return byMAC, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}
