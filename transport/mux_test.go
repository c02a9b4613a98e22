package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/hashicorp/yamux"
)

// checkPeerGone fails unless err is a peer-gone error and in no way io.EOF.
func checkPeerGone(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || errors.Is(err, io.EOF) || !errors.Is(err, ErrPeerGone) || !errdefs.IsUnavailable(err) {
		t.Errorf("%s: %v, want an ErrPeerGone error that is not io.EOF", what, err)
	}
}

func TestMuxDialUnregisteredPort(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	l, err := s.Listen(1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Both directions: the server side can dial the client too.
	for _, d := range []*Mux{c, s} {
		err := within(t, 2*time.Second, "dial", func() error {
			_, err := d.Dial(context.Background(), 2)
			return err
		})
		if !errdefs.IsNotFound(err) {
			t.Errorf("dial unregistered port: %v, want NotFound", err)
		}
	}
	eventually(t, 2*time.Second, "refused streams released", func() bool {
		return c.fins.len() == 0 && s.fins.len() == 0 && c.sess.NumStreams() == 0 && s.sess.NumStreams() == 0
	})
}

func TestMuxDuplicateListen(t *testing.T) {
	m, _, _ := muxPair(t, nil)
	l, err := m.Listen(5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Listen(5); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second listen: %v, want AlreadyExists", err)
	}
	l.Close()
	l2, err := m.Listen(5)
	if err != nil {
		t.Fatalf("listen after close: %v", err)
	}
	l2.Close()
}

func TestMuxListenerClose(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	l, err := s.Listen(5)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Addr().String(); got != "mux:5/0" {
		t.Errorf("listener addr %q", got)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	l.Close()
	err = within(t, 2*time.Second, "accept after close", func() error { return <-accepted })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v, want net.ErrClosed", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept on closed listener: %v", err)
	}
	if _, err := c.Dial(context.Background(), 5); !errdefs.IsNotFound(err) {
		t.Fatalf("dial closed listener: %v, want NotFound", err)
	}
}

// Dial waits for the peer's answer, so it must honour ctx.
func TestMuxDialHonoursContext(t *testing.T) {
	a, _ := socketPair(t) // a peer that never answers
	m, err := NewMux(context.Background(), a, false)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = within(t, 2*time.Second, "dial", func() error {
		_, err := m.Dial(ctx, 5)
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial: %v, want context.DeadlineExceeded", err)
	}
}

// Dial completes before Accept, as a socket connect does: one goroutine may
// dial and then accept. Closing the listener closes what it had queued.
func TestMuxDialBeforeAccept(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	l, err := s.Listen(5)
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.Dial(context.Background(), 5)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	queued, err := c.Dial(context.Background(), 5)
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if got, want := sc.LocalAddr().(MuxAddr).Port, uint32(5); got != want {
		t.Errorf("accepted conn local port %d, want %d", got, want)
	}
	// The peer reads each stream's header on its own, so the two dials may
	// reach the listener in either order: the stream ids tell which one
	// was accepted.
	if sc.LocalAddr().(MuxAddr).Stream == queued.LocalAddr().(MuxAddr).Stream {
		first, queued = queued, first
	}
	if _, err := first.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("accepted conn read %q, %v", buf, err)
	}
	l.Close()
	err = within(t, 2*time.Second, "read on a stream dropped from the backlog", func() error {
		_, err := queued.Read(make([]byte, 1))
		return err
	})
	if err == nil {
		t.Fatal("read on a stream dropped from the backlog returned data")
	}
}

// A stream header that is not ours is refused with a status, not a hang.
func TestMuxBadHeader(t *testing.T) {
	a, b := socketPair(t)
	m, err := NewMux(context.Background(), b, true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	raw, err := yamux.Client(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	s, err := raw.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("GET / HTTP/1.0\r\n"))
	var status [1]byte
	if _, err := io.ReadFull(s, status[:]); err != nil || status[0] != statusBadHeader {
		t.Fatalf("status %d, %v; want %d", status[0], err, statusBadHeader)
	}
}

// openEchoStreams listens with an echo server on srv and dials n streams
// from cli, each proven alive by a round trip.
func openEchoStreams(t *testing.T, cli Dialer, srv ListenerFactory, n int) []Conn {
	t.Helper()
	if srv != nil {
		listen(t, srv, 1024, echo)
	}
	var conns []Conn
	for range n {
		c, err := cli.Dial(context.Background(), 1024)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

// checkDead checks what every user of m sees once the peer is gone: reads
// already blocked, reads and writes afterwards, Dial, Accept.
func checkDead(t *testing.T, m *Mux, conns []Conn, blocked <-chan error, l net.Listener) {
	t.Helper()
	within(t, 2*time.Second, "mux done after peer death", func() struct{} { <-m.Done(); return struct{}{} })
	checkPeerGone(t, "Mux.Err", m.Err())
	t.Logf("Mux.Err: %v", m.Err())
	for range conns {
		checkPeerGone(t, "blocked read", within(t, 2*time.Second, "blocked read", func() error { return <-blocked }))
	}
	for i, c := range conns {
		_, rerr := c.Read(make([]byte, 1))
		checkPeerGone(t, "read", rerr)
		_, werr := c.Write([]byte("x"))
		checkPeerGone(t, "write", werr)
		checkPeerGone(t, "close write", c.CloseWrite())
		if i == 0 {
			t.Logf("stream after peer death: read: %v; write: %v", rerr, werr)
		}
	}
	err := within(t, 2*time.Second, "dial", func() error {
		_, err := m.Dial(context.Background(), 1024)
		return err
	})
	checkPeerGone(t, "dial", err)
	if l != nil {
		_, err = l.Accept()
		checkPeerGone(t, "accept", err)
	}
	if _, err := m.Listen(77); err == nil {
		t.Error("listen on a dead mux succeeded")
	}
}

func blockedReads(conns []Conn) <-chan error {
	ch := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			_, err := c.Read(make([]byte, 1))
			ch <- err
		}()
	}
	return ch
}

// The peer's byte stream is closed under it, as when QEMU or the guest
// dies: no FIN for any stream ever arrives.
func TestMuxPeerDeath(t *testing.T) {
	c, s, sWire := muxPair(t, nil)
	conns := openEchoStreams(t, c, s, 8)
	l, err := c.Listen(9) // a listener on the surviving side too
	if err != nil {
		t.Fatal(err)
	}
	blocked := blockedReads(conns)

	sWire.Close()
	checkDead(t, c, conns, blocked, l)
}

// Same, with a real peer process killed by SIGKILL.
func TestMuxPeerProcessDeath(t *testing.T) {
	sock := filepath.Join(shortDir(t), "chardev")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	peer := startPeer(t, "mux", sock)
	wireConn, err := ul.Accept()
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMux(context.Background(), wireConn, false)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	conns := openEchoStreams(t, m, nil, 8)
	blocked := blockedReads(conns)

	if err := peer.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	peer.Wait()
	checkDead(t, m, conns, blocked, nil)
}

// A stream whose peer finished it with CloseWrite before dying reads all
// data and then io.EOF; a stream the peer was still writing reads the data
// that arrived and then ErrPeerGone.
func TestMuxEOFBeforePeerDeath(t *testing.T) {
	c, s, sWire := muxPair(t, nil)
	l, err := s.Listen(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := payload(1, 1<<20) // fits the window: no reader needed

	var serverConns []Conn
	var clientConns []Conn
	for range 2 {
		cc, err := c.Dial(context.Background(), 1024)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		clientConns = append(clientConns, cc)
		serverConns = append(serverConns, sc.(Conn))
	}
	for _, sc := range serverConns {
		if _, err := sc.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	// Write and CloseWrite return once their frames are on the wire.
	if err := serverConns[0].CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sWire.Close()
	<-c.Done()

	got, err := io.ReadAll(clientConns[0])
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("finished stream: %d bytes, %v; want %d bytes and io.EOF", len(got), err, len(data))
	}
	got, err = io.ReadAll(clientConns[1])
	checkPeerGone(t, "unfinished stream", err)
	if !bytes.Equal(got, data) {
		t.Errorf("unfinished stream: %d bytes, want the %d that were sent", len(got), len(data))
	}
}

// A peer that stops answering is found out by keepalive, and a Dial
// waiting on it returns.
func TestMuxKeepAlive(t *testing.T) {
	a, _ := socketPair(t) // nobody serves the other end
	m, err := newMux(context.Background(), a, false, func(c *yamux.Config) {
		c.KeepAliveInterval = 100 * time.Millisecond
		c.ConnectionWriteTimeout = 300 * time.Millisecond
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = within(t, 5*time.Second, "dial to a silent peer", func() error {
		_, err := m.Dial(context.Background(), 1024)
		return err
	})
	checkPeerGone(t, "dial", err)
	if !errors.Is(m.Err(), yamux.ErrKeepAliveTimeout) {
		t.Errorf("Mux.Err: %v, want keepalive timeout", m.Err())
	}
}

// Our own Close fails streams with net.ErrClosed, not ErrPeerGone.
func TestMuxClose(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	conns := openEchoStreams(t, c, s, 2)
	blocked := blockedReads(conns)
	c.Close()
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if !errors.Is(c.Err(), net.ErrClosed) {
		t.Fatalf("Err after Close: %v", c.Err())
	}
	for range conns {
		err := within(t, 2*time.Second, "blocked read", func() error { return <-blocked })
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read: %v, want net.ErrClosed", err)
		}
	}
	if _, err := c.Dial(context.Background(), 1024); !errors.Is(err, net.ErrClosed) {
		t.Errorf("dial after close: %v", err)
	}
	// The other side sees its peer go.
	within(t, 2*time.Second, "peer done", func() struct{} { <-s.Done(); return struct{}{} })
	checkPeerGone(t, "peer Err", s.Err())
	c.Close() // idempotent
}

// Close does not wait for the peer; a peer still writing is drained rather
// than blocked on a full window, and the stream is released once it closes.
func TestMuxCloseDrainsPeer(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	done := make(chan error, 1)
	listen(t, s, 1024, func(sc Conn) {
		// Several windows' worth, after the client has gone.
		_, err := sc.Write(make([]byte, 3*muxWindow))
		done <- err
	})
	cc, err := c.Dial(context.Background(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	cc.Close()
	if err := within(t, 5*time.Second, "peer write after close", func() error { return <-done }); err != nil {
		t.Fatalf("peer write: %v", err)
	}
	eventually(t, 2*time.Second, "streams released", func() bool {
		return c.fins.len() == 0 && s.fins.len() == 0 && c.sess.NumStreams() == 0 && s.sess.NumStreams() == 0
	})
}

// Many streams opened and finished leave nothing behind on either side.
func TestMuxReleasesStreams(t *testing.T) {
	c, s, _ := muxPair(t, nil)
	listen(t, s, 1024, echo)
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := c.Dial(context.Background(), 1024)
			if err != nil {
				t.Error(err)
				return
			}
			defer cc.Close()
			msg := binary.BigEndian.AppendUint32(nil, uint32(i))
			cc.Write(msg)
			cc.CloseWrite()
			if got, err := io.ReadAll(cc); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("stream %d: %x, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	eventually(t, 2*time.Second, "streams released", func() bool {
		return c.fins.len() == 0 && s.fins.len() == 0 && c.sess.NumStreams() == 0 && s.sess.NumStreams() == 0
	})
}

// TestMuxFinFlood: a hostile peer that sends FINs for streams that never
// were (or are long gone) cannot grow the host's FIN bookkeeping without
// bound, and the session lives on.
func TestMuxFinFlood(t *testing.T) {
	m, guest := rawPeerMux(t)
	const frames = 50000
	go func() {
		for i := range frames {
			// data, FIN, a stream that never was, no body.
			if _, err := guest.Write(frame(0, 0x4, uint32(2*i+1), 0, nil)); err != nil {
				return
			}
		}
		// A ping (SYN): its answer tells that every frame before it was
		// read.
		guest.Write(frame(2, 0x1, 0, 7, nil))
	}()
	reply := make([]byte, 12)
	if err := within(t, 30*time.Second, "ping answer", func() error {
		_, err := io.ReadFull(guest, reply)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if reply[1] != 2 || binary.BigEndian.Uint32(reply[8:12]) != 7 {
		t.Fatalf("reply %x, want the ping's answer", reply)
	}
	if n := m.fins.len(); n > maxEarlyFins {
		t.Errorf("%d FINs kept after %d for streams that never were, want at most %d", n, frames, maxEarlyFins)
	}
	checkSessionAlive(t, m)
}

// rawPeerMux is a host mux whose peer is the test, writing yamux frames
// by hand (frame).
func rawPeerMux(t *testing.T) (*Mux, net.Conn) {
	t.Helper()
	host, guest := net.Pipe()
	m, err := NewMux(context.Background(), host, false, WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		guest.Close()
	})
	return m, guest
}

// checkSessionAlive fails when m's session has ended.
func checkSessionAlive(t *testing.T, m *Mux) {
	t.Helper()
	select {
	case <-m.sess.CloseChan():
		t.Error("the session died of the flood")
	default:
	}
}

// TestFinTrackerEarly: a FIN that comes before its stream is created is
// kept for it; the oldest unclaimed ones go once too many wait.
func TestFinTrackerEarly(t *testing.T) {
	ft := newFinTracker()
	ft.fin(3)
	if !ft.get(3).Load() {
		t.Error("an early FIN was lost")
	}
	for i := range maxEarlyFins + 10 {
		ft.fin(uint32(100 + i))
	}
	if n := ft.len(); n != maxEarlyFins+1 {
		t.Errorf("%d entries, want the claimed one and %d early", n, maxEarlyFins)
	}
	if !ft.get(3).Load() {
		t.Error("a claimed FIN was evicted")
	}
	ft.release(3)
	if ft.get(100).Load() {
		t.Error("the oldest early FIN was kept past the bound")
	}
}

// TestMuxStreamFlood: a hostile peer that opens streams and never says
// which port they are for ties up at most maxRouting of the host's
// goroutines; the others are closed at once.
func TestMuxStreamFlood(t *testing.T) {
	m, guest := rawPeerMux(t)
	go io.Copy(io.Discard, guest) // the host's answers
	before := runtime.NumGoroutine()
	const streams = 2000
	for i := range streams {
		// window update with SYN: a new stream, and nothing on it.
		if _, err := guest.Write(frame(1, 0x1, uint32(2*i+2), 0, nil)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := runtime.NumGoroutine() - before; n > maxRouting+32 {
		t.Errorf("%d goroutines more after %d silent streams, want at most ~%d", n, streams, maxRouting)
	}
	checkSessionAlive(t, m)
}
