//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containerd/log"
	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TapPrefix starts the name of every tap device Plug makes; interfaces with
// it are never taken for the namespace's own.
const TapPrefix = "vztap"

// ingressHandle is the handle of an ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// Attachment is what Plug made in a namespace: a tap per interface, each
// joined to its interface by tc redirects. Unplug undoes it.
type Attachment struct {
	NSPath string
	Config Config
	// Taps are the open tap devices, in Config.Interfaces order, for the
	// VMM. The taps are not persistent: each vanishes with the last file
	// open on it, so a dead VMM and shim leave none behind.
	Taps []*os.File
}

// Close closes the shim's files of the taps (the VMM keeps its own).
func (a *Attachment) Close() {
	for _, f := range a.Taps {
		f.Close()
	}
	a.Taps = nil
}

// Plug joins every interface of the namespace at nsPath (except lo and taps)
// to a new tap device: an ingress qdisc on each with a u32 filter that
// redirects every frame to the other's egress (tc mirred, as Kata and
// firecracker-containerd do). It reads what the guest must be configured
// with. Nothing in the namespace is changed but what it adds; on error it
// removes that again.
func Plug(ctx context.Context, nsPath string) (_ *Attachment, retErr error) {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()

	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces of %s: %w", nsPath, err)
	}
	a := &Attachment{NSPath: nsPath}
	defer func() {
		if retErr != nil {
			a.unplug(ctx, h)
		}
	}()
	byIndex := map[int]string{}
	for _, l := range links {
		attrs := l.Attrs()
		if attrs.Flags&net.FlagLoopback != 0 || strings.HasPrefix(attrs.Name, TapPrefix) || len(attrs.HardwareAddr) != 6 {
			continue
		}
		iface := Interface{Name: attrs.Name, MAC: attrs.HardwareAddr, MTU: attrs.MTU}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", attrs.Name, err)
		}
		for _, ad := range addrs {
			if ad.Scope != int(netlink.SCOPE_UNIVERSE) {
				continue // link-local: the guest makes its own from the same MAC
			}
			p, ok := prefixOf(ad.IPNet)
			if ok {
				iface.Addrs = append(iface.Addrs, p)
			}
		}
		iface.Tap = fmt.Sprintf("%s%d", TapPrefix, len(a.Config.Interfaces))
		// Appended before the tap exists: unplug then cleans up the
		// interface's qdisc whatever step failed.
		a.Config.Interfaces = append(a.Config.Interfaces, iface)
		tap, err := openTap(nsPath, iface.Tap)
		if err != nil {
			return nil, err
		}
		a.Taps = append(a.Taps, tap)
		if err := joinTap(h, l, iface); err != nil {
			return nil, fmt.Errorf("joining %s to %s: %w", iface.Name, iface.Tap, err)
		}
		byIndex[attrs.Index] = attrs.Name
	}

	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("routes of %s: %w", nsPath, err)
	}
	for _, r := range routes {
		name, ok := byIndex[r.LinkIndex]
		// The kernel's own routes (subnets of addresses, link-local,
		// multicast) come back in the guest with the addresses.
		if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		rt := Route{Interface: name, Scope: uint8(r.Scope), Metric: r.Priority}
		if r.Dst != nil {
			p, ok := prefixOf(r.Dst)
			if !ok {
				continue
			}
			if p.Bits() != 0 || !p.Addr().IsUnspecified() {
				rt.Dst = p
			}
		}
		if r.Gw != nil {
			rt.Gateway, _ = netip.AddrFromSlice(r.Gw)
			rt.Gateway = rt.Gateway.Unmap()
		}
		if r.Src != nil {
			rt.Src, _ = netip.AddrFromSlice(r.Src)
			rt.Src = rt.Src.Unmap()
		}
		a.Config.Routes = append(a.Config.Routes, rt)
	}
	err = cnins.WithNetNSPath(nsPath, func(cnins.NetNS) error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
		if err == nil {
			a.Config.IPv6Disabled = strings.TrimSpace(string(b)) == "1"
		} else if errors.Is(err, os.ErrNotExist) {
			a.Config.IPv6Disabled = true // no IPv6 in this kernel
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("netns", nsPath).WithField("interfaces", len(a.Config.Interfaces)).Debug("network plugged")
	return a, nil
}

// joinTap sets the tap up with its interface's MTU and redirects each one's
// ingress to the other's egress.
func joinTap(h *netlink.Handle, l netlink.Link, iface Interface) error {
	tap, err := h.LinkByName(iface.Tap)
	if err != nil {
		return err
	}
	if err := h.LinkSetMTU(tap, iface.MTU); err != nil {
		return fmt.Errorf("mtu: %w", err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if err := redirect(h, l, tap); err != nil {
		return err
	}
	return redirect(h, tap, l)
}

func redirect(h *netlink.Handle, from, to netlink.Link) error {
	idx := from.Attrs().Index
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// openTap creates tap device name in the namespace (a tun device belongs to
// the namespace of the process that opened /dev/net/tun) and returns its
// file. IFF_VNET_HDR lets QEMU pass checksum and segmentation offloads.
func openTap(nsPath, name string) (*os.File, error) {
	var f *os.File
	err := cnins.WithNetNSPath(nsPath, func(cnins.NetNS) error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("creating tap %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tap in %s: %w", nsPath, err)
	}
	return f, nil
}

// Unplug removes what Plug made: the qdiscs (and so the filters) on the
// namespace's interfaces and the taps. A namespace that is gone already
// took them with it.
func (a *Attachment) Unplug(ctx context.Context) error {
	a.Close()
	nsh, err := netns.GetFromPath(a.NSPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("network namespace %s: %w", a.NSPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", a.NSPath, err)
	}
	defer h.Close()
	return a.unplug(ctx, h)
}

func (a *Attachment) unplug(ctx context.Context, h *netlink.Handle) error {
	a.Close()
	var errs []error
	for _, iface := range a.Config.Interfaces {
		if l, err := h.LinkByName(iface.Name); err == nil {
			if err := delIngress(h, l); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", iface.Name, err))
			}
		}
		// Gone with its last file, unless the VMM still runs.
		if l, err := h.LinkByName(iface.Tap); err == nil {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", iface.Tap, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.G(ctx).WithError(err).WithField("netns", a.NSPath).Warn("unplugging the network")
		return err
	}
	return nil
}

func delIngress(h *netlink.Handle, l netlink.Link) error {
	qs, err := h.QdiscList(l)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Type() == "ingress" {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return err
			}
		}
	}
	return nil
}

// UnplugNS is Unplug for a shim that died: it knows the namespace and the
// names of the interfaces it plugged (the taps died with the VMM).
func UnplugNS(ctx context.Context, nsPath string, names []string) error {
	a := &Attachment{NSPath: nsPath}
	for i, n := range names {
		a.Config.Interfaces = append(a.Config.Interfaces, Interface{Name: n, Tap: fmt.Sprintf("%s%d", TapPrefix, i)})
	}
	return a.Unplug(ctx)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip, ones), true
}
