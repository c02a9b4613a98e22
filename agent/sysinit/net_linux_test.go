package sysinit

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func TestBuildDHCP(t *testing.T) {
	req := netip.MustParseAddr("10.0.2.15")
	srv := netip.MustParseAddr("10.0.2.2")
	b := buildDHCP(dhcpRequest, 0xdeadbeef, testMAC, req, srv)
	if len(b) < 300 {
		t.Errorf("message of %d bytes, want at least 300", len(b))
	}
	if b[0] != 1 || b[1] != 1 || b[2] != 6 {
		t.Errorf("op/htype/hlen %v", b[:3])
	}
	if binary.BigEndian.Uint16(b[10:12]) != 0x8000 {
		t.Errorf("broadcast flag not set")
	}
	m, err := parseDHCP(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.xid != 0xdeadbeef || m.msgType != dhcpRequest || !bytes.Equal(m.chaddr, testMAC) {
		t.Errorf("parsed %+v", m)
	}
	if got := m.options[optRequested]; !bytes.Equal(got, []byte{10, 0, 2, 15}) {
		t.Errorf("requested address option %v", got)
	}
	if got := m.options[optServerID]; !bytes.Equal(got, []byte{10, 0, 2, 2}) {
		t.Errorf("server id option %v", got)
	}
	if got := m.options[optParamList]; !bytes.Equal(got, []byte{optSubnetMask, optRouter, optDNS, optDomain}) {
		t.Errorf("parameter list %v", got)
	}

	d, _ := parseDHCP(buildDHCP(dhcpDiscover, 1, testMAC, netip.Addr{}, netip.Addr{}))
	if _, ok := d.options[optRequested]; ok || d.msgType != dhcpDiscover {
		t.Errorf("discover %+v", d)
	}
}

// ack builds a server's answer as QEMU's user network sends it.
func ack(xid uint32, opts ...byte) []byte {
	b := make([]byte, 240)
	b[0], b[1], b[2] = 2, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	copy(b[16:20], []byte{10, 0, 2, 15})
	copy(b[28:], testMAC)
	copy(b[236:], dhcpMagic)
	b = append(b, opts...)
	return append(b, optEnd)
}

func TestParseDHCPLease(t *testing.T) {
	b := ack(7,
		optMsgType, 1, dhcpAck,
		optServerID, 4, 10, 0, 2, 2,
		optPad,
		optSubnetMask, 4, 255, 255, 255, 0,
		optRouter, 4, 10, 0, 2, 2,
		optDNS, 8, 10, 0, 2, 3, 1, 1, 1, 1,
		optDomain, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
		optLeaseTime, 4, 0, 1, 0x51, 0x80,
	)
	m, err := parseDHCP(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.op != 2 || m.xid != 7 || m.msgType != dhcpAck {
		t.Fatalf("parsed %+v", m)
	}
	l, err := m.lease()
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr != netip.MustParseAddr("10.0.2.15") || l.Mask.String() != "ffffff00" ||
		l.Router != netip.MustParseAddr("10.0.2.2") || l.Server != netip.MustParseAddr("10.0.2.2") ||
		l.Domain != "example.com" || l.LeaseTime != 86400*time.Second {
		t.Errorf("lease %+v", l)
	}
	if len(l.Nameservers) != 2 || l.Nameservers[0] != netip.MustParseAddr("10.0.2.3") || l.Nameservers[1] != netip.MustParseAddr("1.1.1.1") {
		t.Errorf("nameservers %v", l.Nameservers)
	}

	// Without a mask the /24 of QEMU's network is assumed; no router, no route.
	m, _ = parseDHCP(ack(8, optMsgType, 1, dhcpAck))
	if l, err := m.lease(); err != nil || l.Mask.String() != "ffffff00" || l.Router.IsValid() {
		t.Errorf("bare lease %+v, %v", l, err)
	}
}

func TestParseDHCPInvalid(t *testing.T) {
	good := ack(1, optMsgType, 1, dhcpOffer)
	noMagic := bytes.Clone(good)
	noMagic[236] = 0
	for name, b := range map[string][]byte{
		"short":     good[:100],
		"no magic":  noMagic,
		"truncated": append(good[:len(good)-1:len(good)-1], optDNS, 8, 10, 0),
	} {
		if _, err := parseDHCP(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	m, _ := parseDHCP(ack(1, optMsgType, 1, dhcpAck))
	binary.BigEndian.PutUint32(good[16:20], 0)
	m2, _ := parseDHCP(good)
	if _, err := m2.lease(); err == nil {
		t.Errorf("lease without an address accepted")
	}
	if _, err := m.lease(); err != nil {
		t.Error(err)
	}
}

func TestIPUDP(t *testing.T) {
	payload := []byte("hello dhcp")
	p := ipUDP(payload)
	if ipChecksum(p[:20]) != 0 {
		t.Errorf("IPv4 header checksum does not verify")
	}
	if !bytes.Equal(p[16:20], []byte{255, 255, 255, 255}) || p[9] != unix.IPPROTO_UDP {
		t.Errorf("header %x", p[:20])
	}
	if binary.BigEndian.Uint16(p[20:22]) != 68 || binary.BigEndian.Uint16(p[22:24]) != 67 {
		t.Errorf("ports %x", p[20:24])
	}
	// Our own packet goes to 67: not one of ours to read.
	if udpPayload(p) != nil {
		t.Errorf("a packet to port 67 was taken as an answer")
	}
	// The answer: ports swapped.
	binary.BigEndian.PutUint16(p[20:22], 67)
	binary.BigEndian.PutUint16(p[22:24], 68)
	if got := udpPayload(p); !bytes.Equal(got, payload) {
		t.Errorf("payload %q", got)
	}
	if udpPayload(p[:25]) != nil {
		t.Errorf("truncated packet accepted")
	}
}

func TestDefaultRouteMsg(t *testing.T) {
	b := defaultRouteMsg(3, netip.MustParseAddr("10.0.2.2"), 9)
	ne := binary.NativeEndian
	if int(ne.Uint32(b[0:4])) != len(b) || ne.Uint16(b[4:6]) != unix.RTM_NEWROUTE || ne.Uint32(b[8:12]) != 9 {
		t.Errorf("header %x", b[:16])
	}
	r := b[unix.SizeofNlMsghdr:]
	if r[0] != unix.AF_INET || r[1] != 0 || r[4] != unix.RT_TABLE_MAIN || r[7] != unix.RTN_UNICAST {
		t.Errorf("rtmsg %x", r[:unix.SizeofRtMsg])
	}
	a := r[unix.SizeofRtMsg:]
	if ne.Uint16(a[2:4]) != unix.RTA_GATEWAY || !bytes.Equal(a[4:8], []byte{10, 0, 2, 2}) {
		t.Errorf("gateway attribute %x", a[:8])
	}
	if ne.Uint16(a[10:12]) != unix.RTA_OIF || ne.Uint32(a[12:16]) != 3 {
		t.Errorf("oif attribute %x", a[8:16])
	}

	ackMsg := make([]byte, unix.SizeofNlMsghdr+4)
	ne.PutUint16(ackMsg[4:6], unix.NLMSG_ERROR)
	if err := netlinkAck(ackMsg); err != nil {
		t.Errorf("ack: %v", err)
	}
	errno := -int32(unix.EEXIST)
	ne.PutUint32(ackMsg[unix.SizeofNlMsghdr:], uint32(errno))
	if err := netlinkAck(ackMsg); err != unix.EEXIST {
		t.Errorf("nack: %v, want EEXIST", err)
	}
}

func TestFirstNIC(t *testing.T) {
	dir := t.TempDir()
	if n, err := firstNIC(filepath.Join(dir, "missing")); n != "" || err != nil {
		t.Errorf("no sysfs: %q, %v", n, err)
	}
	for _, d := range []string{"lo", "sit0", "eth1/device", "eth0/device"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	if n, err := firstNIC(dir); n != "eth0" || err != nil {
		t.Errorf("firstNIC %q, %v, want eth0", n, err)
	}
	os.RemoveAll(filepath.Join(dir, "eth0"))
	os.RemoveAll(filepath.Join(dir, "eth1"))
	if n, err := firstNIC(dir); n != "" || err != nil {
		t.Errorf("only lo and sit0: %q, %v", n, err)
	}
}
