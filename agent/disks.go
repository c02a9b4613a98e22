package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
)

// diskSourcePrefix marks a mount source that names a disk by the
// identifier the shim gave it (virtio-blk serial, VZ block device
// identifier) instead of a device path, which depends on probe order.
const diskSourcePrefix = "disk:"

// diskWait bounds the wait for a disk that is still being probed.
const diskWait = 5 * time.Second

// resolveDisks replaces disk identifiers in mount sources by device paths.
func resolveDisks(sysBlock string, mounts []mount.Mount) ([]mount.Mount, error) {
	out := make([]mount.Mount, len(mounts))
	for i, m := range mounts {
		if id, ok := strings.CutPrefix(m.Source, diskSourcePrefix); ok {
			dev, err := findDisk(sysBlock, id, diskWait)
			if err != nil {
				return nil, err
			}
			m.Source = dev
		}
		out[i] = m
	}
	return out, nil
}

// findDisk looks the disk up in sysfs: there is no udev in the guest.
func findDisk(sysBlock, id string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		serials, _ := filepath.Glob(filepath.Join(sysBlock, "*", "serial"))
		for _, s := range serials {
			b, err := os.ReadFile(s)
			if err == nil && strings.TrimSpace(string(b)) == id {
				return filepath.Join("/dev", filepath.Base(filepath.Dir(s))), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with identifier %q in %s: %w", id, sysBlock, errdefs.ErrNotFound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
