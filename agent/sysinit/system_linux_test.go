package sysinit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLinkUp brings up the loopback of a fresh network namespace.
func TestLinkUp(t *testing.T) {
	expectChildOK(t, "linkup", "", &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNET})
}

func childLinkUp(string) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	if lo.Flags&net.FlagUp != 0 {
		return errors.New("lo is up in a new network namespace: not isolated")
	}
	if addrs, _ := lo.Addrs(); len(addrs) != 0 {
		return fmt.Errorf("lo has addresses before it is up: %v", addrs)
	}
	for run := 1; run <= 2; run++ {
		if err := LinkUp("lo"); err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
	}
	if lo, err = net.InterfaceByName("lo"); err != nil {
		return err
	}
	if lo.Flags&net.FlagUp == 0 {
		return errors.New("lo is down after LinkUp")
	}
	// The kernel gave lo its addresses: loopback traffic works.
	addrs, err := lo.Addrs()
	if err != nil {
		return err
	}
	if fmt.Sprint(addrs) != "[127.0.0.1/8 ::1/128]" {
		return fmt.Errorf("lo addresses after LinkUp: %v", addrs)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1 after LinkUp: %w", err)
	}
	defer l.Close()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial 127.0.0.1 after LinkUp: %w", err)
	}
	c.Close()

	err = LinkUp("nosuchif0")
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "nosuchif0") {
		return fmt.Errorf("LinkUp of a missing interface: %v; want ENODEV naming it", err)
	}
	if err := LinkUp("a-name-longer-than-ifnamsiz"); err == nil {
		return errors.New("LinkUp accepted a name longer than IFNAMSIZ")
	}
	return nil
}

// TestSetHostname sets the hostname of a fresh UTS namespace.
func TestSetHostname(t *testing.T) {
	expectChildOK(t, "hostname", "", &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWUTS})
}

func childHostname(string) error {
	if err := SetHostname("vz-sysinit-test"); err != nil {
		return err
	}
	if h, err := os.Hostname(); err != nil || h != "vz-sysinit-test" {
		return fmt.Errorf("hostname %q, %v after SetHostname", h, err)
	}
	if err := SetHostname(strings.Repeat("x", 65)); !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("SetHostname of 65 bytes: %v; want EINVAL", err)
	}
	return nil
}

// TestSetTimeRejectsBeforeEpoch checks the validation only: there is no
// namespace for CLOCK_REALTIME, and the tests must not set the host's clock.
func TestSetTimeRejectsBeforeEpoch(t *testing.T) {
	for _, tm := range []time.Time{{}, time.Unix(-1, 0)} {
		if err := SetTime(tm); err == nil || !strings.Contains(err.Error(), "before the Unix epoch") {
			t.Errorf("SetTime(%v) = %v; want a refusal", tm, err)
		}
	}
}
