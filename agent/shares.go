package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

// SharesDir is where Setup mounts each host share, as <dir>/<tag>; the
// shim rewrites bind mount sources of the container's spec to it.
const SharesDir = "/run/vz-agent/shares"

const (
	// shareMsize is the 9p message size: larger than the kernel's 8 KiB
	// default for throughput, and within what virtio transport accepts
	// on the kernels we boot (it caps msize by its ring, ~512 KiB).
	shareMsize = 256 << 10
	// shareCache: 9p must not cache, so what the host or the container
	// writes is seen by the other at once. Not "mmap": since Linux 6.6
	// (our kernel is 6.12) it caches enough that a file the host rewrites
	// (nerdctl's /etc/hosts of a compose network) goes stale in the guest.
	shareCache = "none"
)

// shareMount is one share's mount(2) arguments.
type shareMount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// devicesDir is where devices holding several shares are mounted, beside
// the shares directory dir (not in it: a tag may be any name).
func devicesDir(dir string) string { return filepath.Join(filepath.Dir(dir), "sharedevs") }

// shareMountFor builds the mount of share s under dir. The tag names the
// device (the 9p mount_tag or virtio-fs tag), so it is the source; a share
// inside a device of several (s.Device) is a bind of its directory there.
func shareMountFor(dir string, s *agentapi.Share) (shareMount, error) {
	tag := s.GetTag()
	if err := checkTag(tag); err != nil {
		return shareMount{}, fmt.Errorf("share tag %q: %w", tag, err)
	}
	m := shareMount{source: tag, target: filepath.Join(dir, tag)}
	if s.GetReadonly() {
		m.flags |= unix.MS_RDONLY
	}
	fstype, data, err := shareFS(s.GetFstype())
	if err != nil {
		return shareMount{}, fmt.Errorf("share %s: %w", tag, err)
	}
	if dev := s.GetDevice(); dev != "" {
		if err := checkTag(dev); err != nil {
			return shareMount{}, fmt.Errorf("share %s: device %q: %w", tag, dev, err)
		}
		m.source = filepath.Join(devicesDir(dir), dev, tag)
		m.flags |= unix.MS_BIND
		return m, nil
	}
	m.fstype, m.data = fstype, data
	return m, nil
}

func checkTag(tag string) error {
	if tag == "" || tag == "." || tag == ".." || strings.ContainsAny(tag, "/,\x00") {
		return errdefs.ErrInvalidArgument
	}
	return nil
}

// shareFS is the filesystem type and mount data of a share device.
func shareFS(fstype string) (string, string, error) {
	switch fstype {
	case "9p":
		return "9p", "trans=virtio,version=9p2000.L,msize=" + strconv.Itoa(shareMsize) + ",cache=" + shareCache, nil
	case "virtiofs":
		return "virtiofs", "", nil
	default:
		return "", "", fmt.Errorf("filesystem type %q, want 9p or virtiofs: %w", fstype, errdefs.ErrInvalidArgument)
	}
}

// mountShares mounts each share at dir/<tag>, after the devices that hold
// several shares. All of them are checked before anything is mounted, so
// a bad request changes nothing.
func mountShares(dir string, shares []*agentapi.Share) error {
	var devices, binds []shareMount
	seen := make(map[string]bool, len(shares))
	seenDev := make(map[string]bool)
	for _, s := range shares {
		m, err := shareMountFor(dir, s)
		if err != nil {
			return err
		}
		if seen[s.GetTag()] {
			return fmt.Errorf("share tag %q given twice: %w", s.GetTag(), errdefs.ErrInvalidArgument)
		}
		seen[s.GetTag()] = true
		binds = append(binds, m)
		if dev := s.GetDevice(); dev != "" && !seenDev[dev] {
			seenDev[dev] = true
			// Read-write: each share's bind decides, and VZ enforces a
			// directory's read-only flag itself.
			fstype, data, _ := shareFS(s.GetFstype())
			devices = append(devices, shareMount{source: dev, target: filepath.Join(devicesDir(dir), dev), fstype: fstype, data: data})
		}
	}
	for _, m := range append(devices, binds...) {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("share %s: %w", m.source, err)
		}
		if err := retryNotYet(m.mount); err != nil {
			return fmt.Errorf("mounting share %s (%s, %q) at %s: %w", m.source, m.fstype, m.data, m.target, err)
		}
	}
	return nil
}

func (m shareMount) mount() error {
	if m.flags&unix.MS_BIND == 0 {
		return unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	}
	// A bind takes MS_RDONLY only on a remount.
	if err := unix.Mount(m.source, m.target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if m.flags&unix.MS_RDONLY != 0 {
		return unix.Mount("", m.target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, "")
	}
	return nil
}

// hotplugWait bounds the wait for a device the shim added to the running
// VM (a VM restored from a template gets all of its task's devices that
// way): the guest's PCIe hot-plug driver takes a moment to bring it up.
const hotplugWait = 10 * time.Second

// retryNotYet runs fn until it stops failing with ENOENT (no 9p or virtio-fs
// device with that tag yet) or hotplugWait passed.
func retryNotYet(fn func() error) error {
	deadline := time.Now().Add(hotplugWait)
	for {
		err := fn()
		if !errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
