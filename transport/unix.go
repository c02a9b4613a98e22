package transport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// Unix maps port N to the unix socket Dir/N.sock. It is never TCP: the
// sockets are reachable only by the owner (socket 0600, Dir 0700 when Unix
// creates it).
//
// A unix socket cannot tell a peer's CloseWrite from its death: both read as
// io.EOF (or ECONNRESET if the dead peer left data unread), while writes to a
// dead peer fail with EPIPE. Use [Mux] or [Vsock] where that matters.
type Unix struct {
	Dir string
}

var (
	_ Dialer          = Unix{}
	_ ListenerFactory = Unix{}
	_ Conn            = (*net.UnixConn)(nil)
)

// Path returns the socket path of port.
func (u Unix) Path(port uint32) string {
	return filepath.Join(u.Dir, strconv.FormatUint(uint64(port), 10)+".sock")
}

// Dial connects to port. A missing or stale socket fails at once with an
// error classed errdefs.ErrNotFound.
func (u Unix) Dial(ctx context.Context, port uint32) (Conn, error) {
	path := u.Path(port)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("transport: dial unix port %d: %w: %w", port, errNoListener, err)
		}
		return nil, fmt.Errorf("transport: dial unix port %d: %w", port, err)
	}
	return c.(*net.UnixConn), nil
}

// Listen binds Dir/port.sock with mode 0600, creating Dir (0700) if missing
// and replacing a stale socket left by a dead process. A socket that still
// has a live listener is not touched: that is errdefs.ErrAlreadyExists.
// Closing the listener removes the socket file.
func (u Unix) Listen(port uint32) (net.Listener, error) {
	if u.Dir == "" {
		return nil, fmt.Errorf("transport: unix: empty Dir: %w", errdefs.ErrInvalidArgument)
	}
	if err := ensureDir(u.Dir); err != nil {
		return nil, err
	}
	path := u.Path(port)
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("transport: listen unix port %d: %w", port, err)
	}
	// bind honours the umask only; Dir being private covers the short
	// window before this chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("transport: listen unix port %d: %w", port, err)
	}
	return l, nil
}

// ensureDir creates dir with mode 0700. An existing directory is left as it
// is: it may be shared, and its owner chose its mode.
func ensureDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("transport: unix: %w", err)
	}
	// MkdirAll is subject to the umask; make the mode exact.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("transport: unix: %w", err)
	}
	return nil
}

// removeStale removes path if it is a socket nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("transport: unix: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("transport: unix: %s exists and is not a socket: %w", path, errdefs.ErrAlreadyExists)
	}
	// Same probe as containerd's shim socket handling: a live listener
	// answers, a stale file is refused. Anything else (a full backlog)
	// may be a live listener: leave it.
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("transport: unix: %s is in use: %w", path, errdefs.ErrAlreadyExists)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("transport: unix: cannot tell whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("transport: unix: remove stale socket: %w", err)
	}
	return nil
}
