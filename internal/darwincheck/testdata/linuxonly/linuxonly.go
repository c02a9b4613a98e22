// Package linuxonly uses a Linux-only call in a file without build tags,
// as the guest's packages do.
package linuxonly

import "golang.org/x/sys/unix"

func inotify() (int, error) {
	return unix.InotifyInit1(0)
}

var _ = inotify
