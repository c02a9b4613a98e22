package transport

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestUnixModes(t *testing.T) {
	dir := filepath.Join(shortDir(t), "a", "b") // missing parents too
	u := Unix{Dir: dir}
	l, err := u.Listen(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	fi, err = os.Lstat(u.Path(1024))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	if got, want := l.Addr().Network(), "unix"; got != want {
		t.Errorf("listener network %q, want %q", got, want)
	}

	l.Close()
	if _, err := os.Lstat(u.Path(1024)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

func TestUnixListenReplacesStaleSocket(t *testing.T) {
	u := Unix{Dir: shortDir(t)}

	// A socket file whose listener is gone, as after a crash.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: u.Path(7), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	l, err := u.Listen(7)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer l.Close()

	// A live listener is not stolen.
	if _, err := u.Listen(7); !errdefs.IsAlreadyExists(err) {
		t.Errorf("listen over a live socket: %v, want ErrAlreadyExists", err)
	}
	// Nor is a file that is not a socket.
	if err := os.WriteFile(u.Path(8), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Listen(8); !errdefs.IsAlreadyExists(err) {
		t.Errorf("listen over a regular file: %v, want ErrAlreadyExists", err)
	}
}

func TestUnixDialStaleSocket(t *testing.T) {
	u := Unix{Dir: shortDir(t)}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: u.Path(9), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	_, err = u.Dial(context.Background(), 9)
	if !errdefs.IsNotFound(err) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial stale socket: %v, want NotFound wrapping ECONNREFUSED", err)
	}
}

func TestUnixDialHonoursContext(t *testing.T) {
	u := Unix{Dir: shortDir(t)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := u.Dial(ctx, 1024); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with canceled ctx: %v", err)
	}
}

// The peer process is killed. A unix socket cannot tell that from an
// orderly close on the read side (io.EOF, or ECONNRESET if the peer left
// data unread): the test checks that nothing hangs, that writes fail, and
// that Dial is refused.
func TestUnixPeerDeath(t *testing.T) {
	u := Unix{Dir: shortDir(t)}
	peer := startPeer(t, "unix", u.Dir)

	var conns []Conn
	for range 4 {
		c, err := u.Dial(context.Background(), 1024)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	reads := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			_, err := c.Read(make([]byte, 1))
			reads <- err
		}()
	}

	if err := peer.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	peer.Wait()

	for range conns {
		err := within(t, 2*time.Second, "read after peer death", func() error { return <-reads })
		if err == nil {
			t.Error("read after peer death returned data")
		}
		t.Logf("read after peer death: %v", err)
	}
	for i, c := range conns {
		if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("conn %d: write after peer death: %v, want EPIPE", i, err)
		}
	}
	if _, err := u.Dial(context.Background(), 1024); !errdefs.IsNotFound(err) {
		t.Errorf("dial after peer death: %v, want NotFound", err)
	}
}
