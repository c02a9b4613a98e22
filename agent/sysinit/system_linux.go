package sysinit

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// LinkUp sets IFF_UP on the network interface name. Bringing up "lo" also
// gives it 127.0.0.1 and ::1: the kernel adds them itself.
func LinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("link %s up: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("link %s up: get flags: %w", name, err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("link %s up: set flags: %w", name, err)
	}
	return nil
}

// SetHostname sets the hostname of the calling UTS namespace.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	return nil
}

// SetTime sets the system clock (CLOCK_REALTIME) to t. The guest has no
// battery-backed clock worth trusting, so the host sends its time.
func SetTime(t time.Time) error {
	if t.Before(time.Unix(0, 0)) {
		return fmt.Errorf("set time %s: before the Unix epoch", t)
	}
	ts, err := unix.TimeToTimespec(t)
	if err != nil {
		return fmt.Errorf("set time %s: %w", t, err)
	}
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set time %s: %w", t.Format(time.RFC3339Nano), err)
	}
	return nil
}
