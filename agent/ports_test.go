package agent

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/typeurl/v2"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0050":                         "0.0.0.0:80",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"0000000000000000FFFF00000100007F:0035": "127.0.0.1:53", // v4-mapped
	} {
		a, p, err := parseProcAddr(in)
		if err != nil || netip.AddrPortFrom(a, uint16(p)).String() != want {
			t.Errorf("%s: %v %d %v, want %s", in, a, p, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "01007F:1F90", "zz00007F:1F90", "0100007F:zz"} {
		if _, _, err := parseProcAddr(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

const procHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func TestListeningSockets(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, lines ...string) {
		s := procHeader
		for _, l := range lines {
			s += l + "\n"
		}
		os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)
	}
	write("tcp",
		"   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1", // *:8080 listening
		"   1: 0F00000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2", // 10.0.0.15:80 listening
		"   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3", // established
	)
	write("tcp6",
		"   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4", // [::]:8080
		"   1: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 0 0 0 0 0 5", // [::]:9090
	)
	write("udp",
		"   0: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6", // *:5353
		"   1: 00000000:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7", // *:40000, a client's
		"   2: 0100007F:14EA 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 8", // connected
	)
	got, err := listeningSockets(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[listenKey]string{
		{"tcp", 8080}: "127.0.0.1", // IPv4 wins over the dual-stack twin
		{"tcp", 80}:   "10.0.0.15",
		{"tcp", 9090}: "::1",
		{"udp", 5353}: "127.0.0.1",
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, a := range want {
		if got[k].String() != a {
			t.Errorf("%v: %v, want %s", k, got[k], a)
		}
	}
}

func TestPortWatchEvents(t *testing.T) {
	q := newEventQueue()
	w := newPortWatch(t.TempDir(), q)
	ctx := context.Background()
	lo := netip.MustParseAddr("127.0.0.1")
	w.update(ctx, map[listenKey]netip.Addr{{"tcp", 80}: lo})
	w.update(ctx, map[listenKey]netip.Addr{{"tcp", 80}: lo, {"udp", 53}: lo})
	w.update(ctx, map[listenKey]netip.Addr{{"udp", 53}: lo})
	var got []string
	for {
		env, _ := q.next()
		if env == nil {
			break
		}
		q.pop(env)
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil || env.Topic != agentapi.PortEventTopic {
			t.Fatalf("event %v on %s: %v", v, env.Topic, err)
		}
		e := v.(*agentapi.PortEvent)
		got = append(got, e.Protocol+strconv.Itoa(int(e.Port))+map[bool]string{true: "+", false: "-"}[e.Listening])
	}
	if want := []string{"tcp80+", "udp53+", "tcp80-"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("events %v, want %v", got, want)
	}
}

// streamPair is two ends of a loopback TCP connection: what the transport gives the agent
// behaves the same (a full-duplex stream that can be half-closed).
func streamPair(t *testing.T) (shim, agent *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestForwardTCP(t *testing.T) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		c, err := srv.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c) // the whole request, up to the client's half-close
		c.Write(append([]byte("echo:"), b...))
		c.Close()
	}()
	port := uint32(srv.Addr().(*net.TCPAddr).Port)
	w := newPortWatch(t.TempDir(), newEventQueue())
	w.dial = map[listenKey]netip.Addr{{"tcp", port}: netip.MustParseAddr("127.0.0.1")}

	shim, agent := streamPair(t)
	done := make(chan error, 1)
	go func() { done <- w.forward(agent) }()
	shim.Write([]byte("tcp " + strconv.Itoa(int(port)) + "\nhello"))
	shim.CloseWrite()
	shim.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(shim)
	if err != nil || string(b) != "echo:hello" {
		t.Errorf("answer %q, %v; want echo:hello", b, err)
	}
	if err := <-done; err != nil {
		t.Errorf("forward: %v", err)
	}

	// A port nothing listens on.
	shim, agent = streamPair(t)
	go func() { done <- w.forward(agent) }()
	shim.Write([]byte("tcp 1\n"))
	if err := <-done; err == nil {
		t.Error("forward to a port that does not listen: no error")
	}
	shim, agent = streamPair(t)
	go func() { done <- w.forward(agent) }()
	shim.Write([]byte("sctp 80\n"))
	if err := <-done; err == nil {
		t.Error("forward of an unknown protocol: no error")
	}
}

func TestForwardUDP(t *testing.T) {
	srv, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	port := uint32(srv.LocalAddr().(*net.UDPAddr).Port)
	w := newPortWatch(t.TempDir(), newEventQueue())
	w.dial = map[listenKey]netip.Addr{{"udp", port}: netip.MustParseAddr("127.0.0.1")}

	shim, agent := streamPair(t)
	go w.forward(agent)
	frame := func(s string) []byte {
		b := make([]byte, 2, 2+len(s))
		binary.BigEndian.PutUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	shim.Write([]byte("udp " + strconv.Itoa(int(port)) + "\n"))
	shim.Write(frame("one"))
	shim.Write(frame("two"))
	shim.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []string{"re:one", "re:two"} {
		var n [2]byte
		if _, err := io.ReadFull(shim, n[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(shim, b); err != nil || string(b) != want {
			t.Errorf("datagram %q, %v; want %q", b, err, want)
		}
	}
}
