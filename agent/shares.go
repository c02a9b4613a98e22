package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
	// writes is seen by the other at once; "mmap" is cache=none plus
	// the page cache only mmap(2) needs.
	shareCache = "mmap"
)

// shareMount is one share's mount(2) arguments.
type shareMount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// shareMountFor builds the mount of share s under dir. The tag names the
// device (the 9p mount_tag or virtio-fs tag), so it is the source.
func shareMountFor(dir string, s *agentapi.Share) (shareMount, error) {
	tag := s.GetTag()
	if tag == "" || tag == "." || tag == ".." || strings.ContainsAny(tag, "/,\x00") {
		return shareMount{}, fmt.Errorf("share tag %q: %w", tag, errdefs.ErrInvalidArgument)
	}
	m := shareMount{source: tag, target: filepath.Join(dir, tag)}
	if s.GetReadonly() {
		m.flags |= unix.MS_RDONLY
	}
	switch s.GetFstype() {
	case "9p":
		m.fstype = "9p"
		m.data = "trans=virtio,version=9p2000.L,msize=" + strconv.Itoa(shareMsize) + ",cache=" + shareCache
	case "virtiofs":
		m.fstype = "virtiofs"
	default:
		return shareMount{}, fmt.Errorf("share %s: filesystem type %q, want 9p or virtiofs: %w", tag, s.GetFstype(), errdefs.ErrInvalidArgument)
	}
	return m, nil
}

// mountShares mounts each share at dir/<tag>. All of them are checked
// before anything is mounted, so a bad request changes nothing.
func mountShares(dir string, shares []*agentapi.Share) error {
	mounts := make([]shareMount, 0, len(shares))
	seen := make(map[string]bool, len(shares))
	for _, s := range shares {
		m, err := shareMountFor(dir, s)
		if err != nil {
			return err
		}
		if seen[m.source] {
			return fmt.Errorf("share tag %q given twice: %w", m.source, errdefs.ErrInvalidArgument)
		}
		seen[m.source] = true
		mounts = append(mounts, m)
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("share %s: %w", m.source, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting share %s (%s, %q) at %s: %w", m.source, m.fstype, m.data, m.target, err)
		}
	}
	return nil
}
