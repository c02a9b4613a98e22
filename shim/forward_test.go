package shim

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// fakeGuest answers PortForward streams as the agent does, with a TCP server that upper-cases
// what it reads until end-of-file and a UDP server that answers "re:" and the datagram.
type fakeGuest struct {
	t       *testing.T
	headers chan string
}

func (g *fakeGuest) Dial(ctx context.Context, port uint32) (transport.Conn, error) {
	if port != agentapi.PortForward {
		g.t.Errorf("dialled port %d, want PortForward", port)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	s, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	go g.serve(s)
	return c.(*net.TCPConn), nil
}

func (g *fakeGuest) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	g.headers <- strings.TrimSpace(line)
	if strings.HasPrefix(line, "tcp") {
		b, _ := io.ReadAll(br)
		c.Write([]byte(strings.ToUpper(string(b))))
		return
	}
	for {
		var n [2]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(br, b); err != nil {
			return
		}
		out := append([]byte("re:"), b...)
		binary.BigEndian.PutUint16(n[:], uint16(len(out)))
		c.Write(append(n[:], out...))
	}
}

func freePort(t *testing.T, proto string) uint32 {
	t.Helper()
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return uint32(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func TestPortForwarder(t *testing.T) {
	g := &fakeGuest{t: t, headers: make(chan string, 16)}
	f := newPortForwarder(g, nil)
	defer f.close()
	ctx := context.Background()

	tcp := freePort(t, "tcp")
	f.handle(ctx, &agentapi.PortEvent{Protocol: "tcp", Port: tcp, Listening: true})
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(tcp)))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	c.Close()
	if string(b) != "HELLO" || err != nil {
		t.Errorf("through the forward: %q, %v; want HELLO", b, err)
	}
	if h := <-g.headers; h != "tcp "+itoa(tcp) {
		t.Errorf("header %q", h)
	}

	udp := freePort(t, "udp")
	f.handle(ctx, &agentapi.PortEvent{Protocol: "udp", Port: udp, Listening: true})
	u, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(udp)))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, m := range []string{"a", "bb"} {
		u.Write([]byte(m))
		buf := make([]byte, 100)
		n, err := u.Read(buf)
		if err != nil || string(buf[:n]) != "re:"+m {
			t.Errorf("udp %q: %q, %v", m, buf[:n], err)
		}
	}
	if h := <-g.headers; h != "udp "+itoa(udp) {
		t.Errorf("header %q", h)
	}
	select {
	case h := <-g.headers:
		t.Errorf("a second stream (%q) for the same UDP peer", h)
	default:
	}

	// Gone from the guest: gone from the host.
	f.handle(ctx, &agentapi.PortEvent{Protocol: "tcp", Port: tcp, Listening: false})
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", itoa(tcp)), time.Second); err == nil {
		c.Close()
		t.Error("the host port still listens after the guest's closed")
	}
	// Taken on the host: no panic, no listener, a warning.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := uint32(ln.Addr().(*net.TCPAddr).Port)
	f.handle(ctx, &agentapi.PortEvent{Protocol: "tcp", Port: taken, Listening: true})
	f.mu.Lock()
	_, has := f.listeners["tcp/"+itoa(taken)]
	f.mu.Unlock()
	if has {
		t.Error("a listener for a port taken on the host")
	}
}

// TestPortForwarderBound: a guest that announces more ports than
// maxForwards, or ports that are none, gets no more listeners.
func TestPortForwarderBound(t *testing.T) {
	g := &fakeGuest{t: t, headers: make(chan string, 16)}
	f := newPortForwarder(g, nil)
	defer f.close()
	ctx := context.Background()
	for _, p := range []uint32{0, 65536, 1 << 31} {
		f.handle(ctx, &agentapi.PortEvent{Protocol: "tcp", Port: p, Listening: true})
	}
	if n := len(f.listeners); n != 0 {
		t.Fatalf("%d listeners for ports that are none", n)
	}
	// Fill the bound with stand-ins, then announce a real, free port.
	for i := range maxForwards {
		f.listeners["tcp/x"+itoa(uint32(i))] = io.NopCloser(nil)
	}
	port := freePort(t, "tcp")
	f.handle(ctx, &agentapi.PortEvent{Protocol: "tcp", Port: port, Listening: true})
	if f.listeners["tcp/"+itoa(port)] != nil {
		t.Error("a port past the bound was forwarded")
	}
	for k := range f.listeners {
		if k != "tcp/"+itoa(port) {
			delete(f.listeners, k)
		}
	}
}
