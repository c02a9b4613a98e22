package sysinit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Lease is what a DHCP server gave us.
type Lease struct {
	Addr        netip.Addr   // our address
	Mask        net.IPMask   // subnet mask (option 1)
	Router      netip.Addr   // default gateway (option 3), may be invalid
	Nameservers []netip.Addr // option 6
	Domain      string       // option 15
	Server      netip.Addr   // server identifier (option 54)
	LeaseTime   time.Duration
}

// FirstNIC returns the first network interface that is not the loopback,
// by name, or "" when there is none. There is no udev in the guest: sysfs is
// where the kernel lists them.
func FirstNIC() (string, error) {
	return firstNIC("/sys/class/net")
}

func firstNIC(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("listing network interfaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if n == "lo" {
			continue
		}
		// Only devices backed by hardware (virtio-net): not tunnels or
		// dummies that a kernel may create on its own (sit0, tunl0).
		if _, err := os.Stat(filepath.Join(dir, n, "device")); err != nil {
			continue
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return "", nil
	}
	sort.Strings(names)
	return names[0], nil
}

// DHCP message types (option 53) and options we use.
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6

	optPad        = 0
	optSubnetMask = 1
	optRouter     = 3
	optDNS        = 6
	optHostname   = 12
	optDomain     = 15
	optRequested  = 50
	optLeaseTime  = 51
	optMsgType    = 53
	optServerID   = 54
	optParamList  = 55
	optEnd        = 255

	dhcpServerPort = 67
	dhcpClientPort = 68
)

var dhcpMagic = []byte{99, 130, 83, 99}

// dhcpMessage is the part of a BOOTP/DHCP message we read.
type dhcpMessage struct {
	op      byte
	xid     uint32
	yiaddr  netip.Addr
	chaddr  net.HardwareAddr
	msgType byte
	options map[byte][]byte
}

// buildDHCP makes a client message (BOOTREQUEST) of type msgType. For a
// REQUEST, requested and server name the offer being taken.
func buildDHCP(msgType byte, xid uint32, mac net.HardwareAddr, requested, server netip.Addr) []byte {
	b := make([]byte, 240, 300)
	b[0] = 1 // BOOTREQUEST
	b[1] = 1 // Ethernet
	b[2] = 6 // hardware address length
	binary.BigEndian.PutUint32(b[4:8], xid)
	// Broadcast flag: we cannot receive unicast before we have an address.
	binary.BigEndian.PutUint16(b[10:12], 0x8000)
	copy(b[28:44], mac)
	copy(b[236:240], dhcpMagic)
	b = append(b, optMsgType, 1, msgType)
	if requested.IsValid() {
		a := requested.As4()
		b = append(b, optRequested, 4, a[0], a[1], a[2], a[3])
	}
	if server.IsValid() {
		a := server.As4()
		b = append(b, optServerID, 4, a[0], a[1], a[2], a[3])
	}
	b = append(b, optParamList, 4, optSubnetMask, optRouter, optDNS, optDomain)
	b = append(b, optEnd)
	// Some servers drop BOOTP messages shorter than the 300 bytes of RFC 951.
	for len(b) < 300 {
		b = append(b, optPad)
	}
	return b
}

// parseDHCP reads a BOOTP/DHCP message.
func parseDHCP(b []byte) (*dhcpMessage, error) {
	if len(b) < 240 {
		return nil, fmt.Errorf("dhcp message of %d bytes: too short", len(b))
	}
	if !bytes.Equal(b[236:240], dhcpMagic) {
		return nil, errors.New("dhcp message without the magic cookie")
	}
	hlen := int(b[2])
	if hlen > 16 {
		return nil, fmt.Errorf("dhcp message: hardware address length %d", hlen)
	}
	m := &dhcpMessage{
		op:      b[0],
		xid:     binary.BigEndian.Uint32(b[4:8]),
		yiaddr:  netip.AddrFrom4([4]byte(b[16:20])),
		chaddr:  net.HardwareAddr(bytes.Clone(b[28 : 28+hlen])),
		options: make(map[byte][]byte),
	}
	opts := b[240:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == optEnd {
			break
		}
		if code == optPad {
			i++
			continue
		}
		if i+1 >= len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return nil, fmt.Errorf("dhcp option %d: truncated", code)
		}
		n := int(opts[i+1])
		// Repeated options are concatenated (RFC 3396).
		m.options[code] = append(m.options[code], opts[i+2:i+2+n]...)
		i += 2 + n
	}
	if t := m.options[optMsgType]; len(t) == 1 {
		m.msgType = t[0]
	}
	return m, nil
}

// lease turns an ACK into a Lease.
func (m *dhcpMessage) lease() (*Lease, error) {
	l := &Lease{Addr: m.yiaddr, Mask: net.CIDRMask(24, 32)}
	if !l.Addr.Is4() || l.Addr.IsUnspecified() {
		return nil, fmt.Errorf("dhcp: no address offered")
	}
	if v := m.options[optSubnetMask]; len(v) == 4 {
		l.Mask = net.IPMask(bytes.Clone(v))
	}
	if v := m.options[optRouter]; len(v) >= 4 {
		l.Router = netip.AddrFrom4([4]byte(v[:4]))
	}
	for v := m.options[optDNS]; len(v) >= 4; v = v[4:] {
		l.Nameservers = append(l.Nameservers, netip.AddrFrom4([4]byte(v[:4])))
	}
	if v := m.options[optDomain]; len(v) > 0 {
		l.Domain = strings.TrimRight(string(v), "\x00")
	}
	if v := m.options[optServerID]; len(v) == 4 {
		l.Server = netip.AddrFrom4([4]byte(v))
	}
	if v := m.options[optLeaseTime]; len(v) == 4 {
		l.LeaseTime = time.Duration(binary.BigEndian.Uint32(v)) * time.Second
	}
	return l, nil
}

// ipUDP wraps payload in IPv4 and UDP headers, from 0.0.0.0:68 to
// 255.255.255.255:67: the packet socket sends it as is.
func ipUDP(payload []byte) []byte {
	const ipLen, udpLen = 20, 8
	b := make([]byte, ipLen+udpLen+len(payload))
	b[0] = 0x45 // IPv4, 5 words of header
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	b[8] = 64 // TTL
	b[9] = unix.IPPROTO_UDP
	copy(b[16:20], []byte{255, 255, 255, 255})
	binary.BigEndian.PutUint16(b[10:12], ipChecksum(b[:ipLen]))
	u := b[ipLen:]
	binary.BigEndian.PutUint16(u[0:2], dhcpClientPort)
	binary.BigEndian.PutUint16(u[2:4], dhcpServerPort)
	binary.BigEndian.PutUint16(u[4:6], uint16(udpLen+len(payload)))
	// UDP checksum 0: none, allowed over IPv4.
	copy(u[udpLen:], payload)
	return b
}

// udpPayload returns the payload of an IPv4 UDP packet to port 68, or nil.
func udpPayload(b []byte) []byte {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_UDP {
		return nil
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl+8 {
		return nil
	}
	u := b[ihl:]
	if binary.BigEndian.Uint16(u[2:4]) != dhcpClientPort {
		return nil
	}
	n := int(binary.BigEndian.Uint16(u[4:6]))
	if n < 8 || n > len(u) {
		return nil
	}
	return u[8:n]
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// DHCP asks for an address on interface name (which must be up) and
// returns the lease; it gives up after timeout. It speaks over a packet
// socket: the interface has no address yet, so the kernel's UDP would drop
// the server's answers.
func DHCP(ctx context.Context, name string, timeout time.Duration) (*Lease, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("dhcp on %s: %w", name, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("dhcp on %s: hardware address %q is not Ethernet", name, ifi.HardwareAddr)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return nil, fmt.Errorf("dhcp on %s: packet socket: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("dhcp on %s: bind: %w", name, err)
	}
	c := &dhcpConn{fd: fd, ifindex: ifi.Index, mac: ifi.HardwareAddr}

	deadline := time.Now().Add(timeout)
	var xidb [4]byte
	_, _ = rand.Read(xidb[:])
	xid := binary.BigEndian.Uint32(xidb[:])
	// Retries double the wait, from 500ms: TCG guests and busy hosts are slow.
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dhcp on %s: no lease after %s (%d attempts)", name, timeout, attempt-1)
		}
		xid++
		l, err := c.exchange(xid, wait, deadline)
		if err == nil {
			return l, nil
		}
		log.G(ctx).WithError(err).WithField("attempt", attempt).Debug("dhcp")
		wait *= 2
	}
}

type dhcpConn struct {
	fd      int
	ifindex int
	mac     net.HardwareAddr
}

// exchange runs DISCOVER/OFFER/REQUEST/ACK once, waiting at most wait for
// each answer.
func (c *dhcpConn) exchange(xid uint32, wait time.Duration, deadline time.Time) (*Lease, error) {
	if err := c.send(buildDHCP(dhcpDiscover, xid, c.mac, netip.Addr{}, netip.Addr{})); err != nil {
		return nil, err
	}
	offer, err := c.receive(xid, wait, deadline, dhcpOffer)
	if err != nil {
		return nil, fmt.Errorf("waiting for an offer: %w", err)
	}
	server := netip.Addr{}
	if v := offer.options[optServerID]; len(v) == 4 {
		server = netip.AddrFrom4([4]byte(v))
	}
	if err := c.send(buildDHCP(dhcpRequest, xid, c.mac, offer.yiaddr, server)); err != nil {
		return nil, err
	}
	ack, err := c.receive(xid, wait, deadline, dhcpAck)
	if err != nil {
		return nil, fmt.Errorf("waiting for an ack of %s: %w", offer.yiaddr, err)
	}
	return ack.lease()
}

func (c *dhcpConn) send(msg []byte) error {
	to := &unix.SockaddrLinklayer{
		Protocol: htons(unix.ETH_P_IP),
		Ifindex:  c.ifindex,
		Halen:    6,
		Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	if err := unix.Sendto(c.fd, ipUDP(msg), 0, to); err != nil {
		return fmt.Errorf("dhcp send: %w", err)
	}
	return nil
}

// receive waits for the message of type want answering xid. A NAK is an
// error; anything else (other hosts' traffic) is skipped.
func (c *dhcpConn) receive(xid uint32, wait time.Duration, deadline time.Time, want byte) (*dhcpMessage, error) {
	end := time.Now().Add(wait)
	if end.After(deadline) {
		end = deadline
	}
	buf := make([]byte, 1500)
	for {
		left := time.Until(end)
		if left <= 0 {
			return nil, errors.New("timed out")
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, fmt.Errorf("dhcp: receive timeout: %w", err)
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("dhcp receive: %w", err)
		}
		p := udpPayload(buf[:n])
		if p == nil {
			continue
		}
		m, err := parseDHCP(p)
		if err != nil || m.op != 2 || m.xid != xid || !bytes.Equal(m.chaddr, c.mac) {
			continue
		}
		if m.msgType == dhcpNak {
			return nil, errors.New("server answered NAK")
		}
		if m.msgType == want {
			return m, nil
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ConfigureInterface gives interface name the lease's address and netmask
// and, when the lease names a router, a default route through it.
func ConfigureInterface(name string, l *Lease) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("configure %s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	set := func(req uint, what string, v []byte) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("configure %s: %w", name, err)
		}
		if err := ifr.SetInet4Addr(v); err != nil {
			return fmt.Errorf("configure %s: %s: %w", name, what, err)
		}
		if err := unix.IoctlIfreq(fd, req, ifr); err != nil {
			return fmt.Errorf("configure %s: set %s %v: %w", name, what, net.IP(v), err)
		}
		return nil
	}
	addr := l.Addr.As4()
	if err := set(unix.SIOCSIFADDR, "address", addr[:]); err != nil {
		return err
	}
	if err := set(unix.SIOCSIFNETMASK, "netmask", l.Mask); err != nil {
		return err
	}
	var brd [4]byte
	for i := range brd {
		brd[i] = addr[i] | ^l.Mask[i]
	}
	if err := set(unix.SIOCSIFBRDADDR, "broadcast", brd[:]); err != nil {
		return err
	}
	if err := LinkUp(name); err != nil {
		return err
	}
	if !l.Router.IsValid() {
		return nil
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("configure %s: %w", name, err)
	}
	if err := addDefaultRoute(ifi.Index, l.Router); err != nil {
		return fmt.Errorf("configure %s: default route via %s: %w", name, l.Router, err)
	}
	return nil
}

// addDefaultRoute sends one rtnetlink RTM_NEWROUTE: 0.0.0.0/0 via gw out of
// interface ifindex, in the main table.
func addDefaultRoute(ifindex int, gw netip.Addr) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	msg := defaultRouteMsg(ifindex, gw, 1)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("netlink receive: %w", err)
	}
	return netlinkAck(buf[:n])
}

// defaultRouteMsg is the RTM_NEWROUTE request of addDefaultRoute.
func defaultRouteMsg(ifindex int, gw netip.Addr, seq uint32) []byte {
	const hdr, rtm, attr4 = unix.SizeofNlMsghdr, unix.SizeofRtMsg, unix.SizeofRtAttr + 4
	b := make([]byte, hdr+rtm+2*attr4)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:4], uint32(len(b)))
	ne.PutUint16(b[4:6], unix.RTM_NEWROUTE)
	ne.PutUint16(b[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	ne.PutUint32(b[8:12], seq)
	r := b[hdr:]
	r[0] = unix.AF_INET           // family
	r[1] = 0                      // dst_len: the default route
	r[4] = unix.RT_TABLE_MAIN     // table
	r[5] = unix.RTPROT_BOOT       // protocol
	r[6] = unix.RT_SCOPE_UNIVERSE // scope
	r[7] = unix.RTN_UNICAST       // type
	a := b[hdr+rtm:]
	ne.PutUint16(a[0:2], attr4)
	ne.PutUint16(a[2:4], unix.RTA_GATEWAY)
	g := gw.As4()
	copy(a[4:8], g[:])
	a = a[attr4:]
	ne.PutUint16(a[0:2], attr4)
	ne.PutUint16(a[2:4], unix.RTA_OIF)
	ne.PutUint32(a[4:8], uint32(ifindex))
	return b
}

// netlinkAck reads the NLMSG_ERROR answer to a request with NLM_F_ACK.
func netlinkAck(b []byte) error {
	if len(b) < unix.SizeofNlMsghdr+4 {
		return fmt.Errorf("netlink: short answer of %d bytes", len(b))
	}
	ne := binary.NativeEndian
	if typ := ne.Uint16(b[4:6]); typ != unix.NLMSG_ERROR {
		return fmt.Errorf("netlink: answer of type %d, want an ack", typ)
	}
	if errno := int32(ne.Uint32(b[unix.SizeofNlMsghdr:])); errno != 0 {
		return unix.Errno(-errno)
	}
	return nil
}
