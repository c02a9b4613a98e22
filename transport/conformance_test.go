package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// Every transport must pass the same tests: the code above transport/ is
// the same on every backend.

type backend struct {
	name string
	// pair returns the dialing side and the listening side.
	pair func(t *testing.T) (Dialer, ListenerFactory)
}

var backends = []backend{
	{"unix", func(t *testing.T) (Dialer, ListenerFactory) {
		u := Unix{Dir: shortDir(t)}
		return u, u
	}},
	{"mux", func(t *testing.T) (Dialer, ListenerFactory) {
		c, s, _ := muxPair(t, nil)
		return c, s
	}},
}

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		run  func(*testing.T, Dialer, ListenerFactory)
	}{
		{"ConcurrentStreams", testConcurrentStreams},
		{"HalfClose", testHalfClose},
		{"LargeTransfer", testLargeTransfer},
		{"CloseUnblocksRead", testCloseUnblocksRead},
		{"ReadDeadline", testReadDeadline},
		{"DialNoListener", testDialNoListener},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					d, lf := b.pair(t)
					tc.run(t, d, lf)
				})
			}
		})
	}
}

// listen starts a listener whose connections are served by handle, and
// returns when the server has stopped.
func listen(t *testing.T, lf ListenerFactory, port uint32, handle func(Conn)) {
	t.Helper()
	l, err := lf.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) && !errors.Is(err, ErrPeerGone) {
					t.Errorf("accept: %v", err)
				}
				return
			}
			conn, ok := c.(Conn)
			if !ok {
				t.Errorf("accepted %T does not implement Conn", c)
				c.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				handle(conn)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
}

// echo copies everything back, then ends its side.
func echo(c Conn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// 64 streams at once, each with its own data, all echoed byte-exact.
func testConcurrentStreams(t *testing.T, d Dialer, lf ListenerFactory) {
	const streams, size = 64, 256 << 10
	listen(t, lf, 1024, echo)

	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.Dial(context.Background(), 1024)
			if err != nil {
				t.Errorf("stream %d: dial: %v", i, err)
				return
			}
			defer c.Close()
			want := payload(uint64(i), size)
			go func() {
				if _, err := c.Write(want); err != nil {
					t.Errorf("stream %d: write: %v", i, err)
				}
				if err := c.CloseWrite(); err != nil {
					t.Errorf("stream %d: close write: %v", i, err)
				}
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("stream %d: read: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("stream %d: got %d bytes, want %d (contents differ: %v)", i, len(got), len(want), len(got) == len(want))
			}
		}()
	}
	wg.Wait()
}

// The client's CloseWrite reaches the server as EOF after all the bytes;
// the server then answers on the same connection.
func testHalfClose(t *testing.T, d Dialer, lf ListenerFactory) {
	listen(t, lf, 1024, func(c Conn) {
		req, err := io.ReadAll(c) // returns at the client's CloseWrite
		if err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		if _, err := c.Write(append([]byte("reply to "), req...)); err != nil {
			t.Errorf("server write: %v", err)
		}
	})

	c, err := d.Dial(context.Background(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("more")); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("write after CloseWrite: got %v, want EPIPE", err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "reply to request" {
		t.Fatalf("reply %q", reply)
	}
}

// 100 MiB one way, checked by sha256; logs the throughput.
func testLargeTransfer(t *testing.T, d Dialer, lf ListenerFactory) {
	const size = 100 << 20
	listen(t, lf, 1024, func(c Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		c.Write(h.Sum(nil))
	})

	c, err := d.Dial(context.Background(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := io.LimitReader(rand.NewChaCha8([32]byte{42}), size)
	h := sha256.New()
	start := time.Now()
	// 1 MiB writes, as io.Copy from a pipe or file would do.
	if _, err := io.CopyBuffer(io.MultiWriter(c, h), src, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sum, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if !bytes.Equal(sum, h.Sum(nil)) {
		t.Fatalf("sha256 mismatch: server %x, client %x", sum, h.Sum(nil))
	}
	t.Logf("100 MiB in %v: %.0f MB/s (including sha256 on both sides)", elapsed.Round(time.Millisecond), size/elapsed.Seconds()/1e6)
}

// Close from another goroutine unblocks a pending Read: ttrpc relies on it.
func testCloseUnblocksRead(t *testing.T, d Dialer, lf ListenerFactory) {
	listen(t, lf, 1024, func(c Conn) { io.Copy(io.Discard, c) })
	c, err := d.Dial(context.Background(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		errc <- err
	}()
	// Let the reader block; the test passes either way, it only gets
	// weaker if Close wins the race.
	time.Sleep(20 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	err = within(t, 2*time.Second, "read after close", func() error { return <-errc })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}

func testReadDeadline(t *testing.T, d Dialer, lf ListenerFactory) {
	listen(t, lf, 1024, func(c Conn) { io.Copy(io.Discard, c) })
	c, err := d.Dial(context.Background(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	err = within(t, 2*time.Second, "read with deadline", func() error {
		_, err := c.Read(make([]byte, 1))
		return err
	})
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline: %v, want a timeout", err)
	}
}

// Nobody listens: Dial fails at once with a NotFound error.
func testDialNoListener(t *testing.T, d Dialer, lf ListenerFactory) {
	start := time.Now()
	err := within(t, 2*time.Second, "dial", func() error {
		_, err := d.Dial(context.Background(), 4242)
		return err
	})
	if !errdefs.IsNotFound(err) {
		t.Fatalf("dial to unused port: %v, want errdefs.ErrNotFound", err)
	}
	t.Logf("refused in %v: %v", time.Since(start), err)
}
