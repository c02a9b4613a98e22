package vz

import (
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fakeVZConn is shaped like vz.VirtioSocketConnection (v3.7.1): a net.Conn
// without CloseWrite over an unexported rawConn field.
type fakeVZConn struct {
	rawConn         net.Conn
	destinationPort uint32
}

func (c *fakeVZConn) Read(b []byte) (int, error)         { return c.rawConn.Read(b) }
func (c *fakeVZConn) Write(b []byte) (int, error)        { return c.rawConn.Write(b) }
func (c *fakeVZConn) Close() error                       { return c.rawConn.Close() }
func (c *fakeVZConn) LocalAddr() net.Addr                { return c.rawConn.LocalAddr() }
func (c *fakeVZConn) RemoteAddr() net.Addr               { return c.rawConn.RemoteAddr() }
func (c *fakeVZConn) SetDeadline(t time.Time) error      { return c.rawConn.SetDeadline(t) }
func (c *fakeVZConn) SetReadDeadline(t time.Time) error  { return c.rawConn.SetReadDeadline(t) }
func (c *fakeVZConn) SetWriteDeadline(t time.Time) error { return c.rawConn.SetWriteDeadline(t) }

// unixPair returns two ends of a unix stream connection, as VZ's socket is.
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestWithCloseWrite(t *testing.T) {
	a, peer := unixPair(t)
	c, err := withCloseWrite(&fakeVZConn{rawConn: a, destinationPort: 1025})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("stdin")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The peer reads everything, then EOF...
	b, err := io.ReadAll(peer)
	if err != nil || string(b) != "stdin" {
		t.Fatalf("peer read %q, %v", b, err)
	}
	// ... and can still answer.
	if _, err := peer.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "out" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// A connection with its own CloseWrite is returned as it is.
func TestWithCloseWriteNative(t *testing.T) {
	a, _ := unixPair(t)
	c, err := withCloseWrite(a)
	if err != nil {
		t.Fatal(err)
	}
	if c != a {
		t.Errorf("wrapped %T", c)
	}
}

type noRawConn struct{ fakeVZConn }

// otherRawConn has a rawConn field of another type.
type otherRawConn struct {
	net.Conn
	//lint:ignore U1000 only looked up by reflection
	rawConn int
}

func (otherRawConn) Read([]byte) (int, error) { return 0, io.EOF }

func TestWithCloseWriteUnsupported(t *testing.T) {
	a, _ := unixPair(t)
	for _, c := range []net.Conn{
		&fakeVZConn{rawConn: struct{ net.Conn }{a}}, // hides CloseWrite
		&noRawConn{},
		&otherRawConn{Conn: struct{ net.Conn }{a}},
	} {
		if _, err := withCloseWrite(c); !errors.Is(err, errdefs.ErrNotImplemented) {
			t.Errorf("%T: err %v, want not implemented", c, err)
		}
	}
}
