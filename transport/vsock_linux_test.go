package transport

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// vsockSkip skips loudly: a silent skip would pass CI without ever testing
// the transport production uses.
func vsockSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	devs := ""
	for _, d := range []string{"/dev/vsock", "/dev/vhost-vsock"} {
		if _, err := os.Stat(d); err != nil {
			devs += " " + d + ": missing;"
		} else {
			devs += " " + d + ": present;"
		}
	}
	t.Skipf("!!! VSOCK TRANSPORT NOT TESTED END-TO-END: "+format+" (%s)", append(args, devs[1:])...)
}

func TestVsock(t *testing.T) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		vsockSkip(t, "no AF_VSOCK in this kernel: %v; load vsock / vhost_vsock / vsock_loopback", err)
	}
	unix.Close(fd)

	l, err := Vsock{}.Listen(0) // 0: the kernel picks a port
	if err != nil {
		vsockSkip(t, "vsock listen: %v", err)
	}
	defer l.Close()
	port := l.Addr().(*vsock.Addr).Port

	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		echo(c.(Conn))
	}()

	// Loopback to our own listener needs the vsock_loopback transport.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := Vsock{CID: vsock.Local}.Dial(ctx, port)
	if err != nil {
		vsockSkip(t, "listen works, but dialing the local CID failed (no vsock_loopback module, no /dev/vhost-vsock): %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("over vsock")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "over vsock" {
		t.Fatalf("echo: %q, %v", got, err)
	}

	// A port nobody listens on is refused, not hung.
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l2, err := Vsock{}.Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	unused := l2.Addr().(*vsock.Addr).Port
	l2.Close()
	if _, err := (Vsock{CID: vsock.Local}).Dial(ctx, unused); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to an unused vsock port: %v, want a prompt refusal", err)
	}
}
