package sysinit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	children["dhcp"] = childDHCP
}

// TestDHCPVeth runs the client against a fake server (answering as QEMU's
// user network does) over a veth pair in a network namespace of its own, then
// a client with no server, which must give up in time.
func TestDHCPVeth(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("SKIPPED: no ip command (apt-get install iproute2)")
	}
	expectChildOK(t, "dhcp", "", &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET})
}

func childDHCP(string) error {
	for _, args := range [][]string{
		{"link", "add", "c0", "type", "veth", "peer", "name", "s0"},
		{"link", "add", "c1", "type", "veth", "peer", "name", "s1"},
		{"link", "set", "s0", "up"},
		{"link", "set", "s1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	stop, err := fakeDHCPServer("s0")
	if err != nil {
		return err
	}
	defer stop()

	ctx := context.Background()
	if err := LinkUp("c0"); err != nil {
		return err
	}
	l, err := DHCP(ctx, "c0", 10*time.Second)
	if err != nil {
		return err
	}
	if l.Addr.String() != "10.0.2.15" || l.Router.String() != "10.0.2.2" || len(l.Nameservers) != 1 || l.Nameservers[0].String() != "10.0.2.3" || l.Domain != "example.com" {
		return fmt.Errorf("lease %+v", l)
	}
	if err := ConfigureInterface("c0", l); err != nil {
		return err
	}
	ifi, err := net.InterfaceByName("c0")
	if err != nil {
		return err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return err
	}
	if len(addrs) == 0 || !strings.Contains(fmt.Sprint(addrs), "10.0.2.15/24") {
		return fmt.Errorf("c0 addresses %v, want 10.0.2.15/24", addrs)
	}
	routes, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return err
	}
	// c0, destination 0.0.0.0, gateway 10.0.2.2 (little-endian hex).
	if !strings.Contains(string(routes), "c0\t00000000\t0202000A") {
		return fmt.Errorf("no default route via 10.0.2.2 on c0:\n%s", routes)
	}

	// No server on c1: an error, within the timeout.
	if err := LinkUp("c1"); err != nil {
		return err
	}
	start := time.Now()
	if _, err := DHCP(ctx, "c1", 1500*time.Millisecond); err == nil {
		return errors.New("dhcp without a server succeeded")
	}
	if took := time.Since(start); took > 3*time.Second {
		return fmt.Errorf("dhcp without a server gave up after %s, timeout 1.5s", took)
	}
	return nil
}

// fakeDHCPServer answers DISCOVER with an OFFER and REQUEST with an ACK of
// 10.0.2.15, broadcast, like QEMU's user network.
func fakeDHCPServer(name string) (stop func(), _ error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// Wake up now and then to see done: closing fd does not end a blocked read.
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		buf := make([]byte, 1500)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				select {
				case <-done:
					return
				default:
				}
				continue
			}
			p := buf[:n]
			if n < 28 || p[9] != unix.IPPROTO_UDP || binary.BigEndian.Uint16(p[22:24]) != dhcpServerPort {
				continue
			}
			m, err := parseDHCP(p[28:])
			if err != nil || m.op != 1 {
				continue
			}
			typ := byte(dhcpOffer)
			if m.msgType == dhcpRequest {
				typ = dhcpAck
			}
			reply := ack(m.xid,
				optMsgType, 1, typ,
				optServerID, 4, 10, 0, 2, 2,
				optSubnetMask, 4, 255, 255, 255, 0,
				optRouter, 4, 10, 0, 2, 2,
				optDNS, 4, 10, 0, 2, 3,
				optDomain, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
			)
			copy(reply[28:], m.chaddr)
			pkt := ipUDP(reply)
			copy(pkt[12:16], []byte{10, 0, 2, 2})
			binary.BigEndian.PutUint16(pkt[10:12], 0)
			binary.BigEndian.PutUint16(pkt[10:12], ipChecksum(pkt[:20]))
			binary.BigEndian.PutUint16(pkt[20:22], dhcpServerPort)
			binary.BigEndian.PutUint16(pkt[22:24], dhcpClientPort)
			to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index, Halen: 6,
				Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
			_ = unix.Sendto(fd, pkt, 0, to)
		}
	}()
	return func() {
		close(done)
		<-exited
		unix.Close(fd)
	}, nil
}
