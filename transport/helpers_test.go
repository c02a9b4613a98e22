package transport

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// The test binary doubles as the peer process for the peer-death tests:
// TRANSPORT_TEST_PEER selects what it runs.
func TestMain(m *testing.M) {
	if mode := os.Getenv("TRANSPORT_TEST_PEER"); mode != "" {
		if err := runPeer(mode, os.Getenv("TRANSPORT_TEST_ADDR")); err != nil {
			fmt.Fprintln(os.Stderr, "peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runPeer serves an echo listener on port 1024 until killed, and prints
// "ready" once it listens.
func runPeer(mode, addr string) error {
	var lf ListenerFactory
	switch mode {
	case "unix":
		lf = Unix{Dir: addr}
	case "mux":
		c, err := net.Dial("unix", addr)
		if err != nil {
			return err
		}
		m, err := NewMux(context.Background(), c, true)
		if err != nil {
			return err
		}
		lf = m
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	l, err := lf.Listen(1024)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			io.Copy(c, c)
			c.(Conn).CloseWrite()
		}()
	}
}

// startPeer runs the test binary as a peer process and waits for it to
// listen.
func startPeer(t *testing.T, mode, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TRANSPORT_TEST_PEER="+mode, "TRANSPORT_TEST_ADDR="+addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("peer did not start: %q, %v", line, err)
	}
	return cmd
}

// shortDir returns a fresh directory with a short path: sun_path holds
// about 100 bytes and test names make t.TempDir long.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// socketPair returns the two ends of a connected unix stream socket, the
// closest thing here to QEMU's chardev socket and the guest's serial port.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(shortDir(t), "pair"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type accepted struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := l.AcceptUnix()
		ch <- accepted{c, err}
	}()
	a, err := net.DialUnix("unix", nil, l.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// muxPair returns a client and a server Mux over a socket pair, plus the
// server's raw end so a test can kill it.
func muxPair(t *testing.T, tune func(*yamux.Config)) (client, server *Mux, serverWire net.Conn) {
	t.Helper()
	a, b := socketPair(t)
	ctx := context.Background()
	client, err := newMux(ctx, a, false, tune)
	if err != nil {
		t.Fatal(err)
	}
	server, err = newMux(ctx, b, true, tune)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, b
}

// payload returns n bytes that differ per seed.
func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 0xAB})
	r.Read(b)
	return b
}

// within runs f and fails the test if it does not return in d.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
		panic("unreachable")
	}
}

// eventually polls cond: for state that has no event to wait on, such as
// yamux freeing a stream after both FINs.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
