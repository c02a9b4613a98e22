package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/api/diskstamp"
)

// diskSourcePrefix marks a mount source that names a disk by the
// identifier the shim gave it (virtio-blk serial, VZ block device
// identifier) instead of a device path, which depends on probe order.
const diskSourcePrefix = "disk:"

// diskWait bounds the wait for a disk that is still being probed.
const diskWait = 10 * time.Second

// resolveDisks replaces disk identifiers in mount sources by device paths
// (dev is /dev, sysBlock /sys/block).
func resolveDisks(sysBlock, dev string, mounts []mount.Mount) ([]mount.Mount, error) {
	out := make([]mount.Mount, len(mounts))
	for i, m := range mounts {
		if id, ok := strings.CutPrefix(m.Source, diskSourcePrefix); ok {
			d, err := findDisk(sysBlock, dev, id, diskWait)
			if err != nil {
				return nil, err
			}
			m.Source = d
		}
		out[i] = m
	}
	return out, nil
}

// findDisk looks the disk up in sysfs: there is no udev in the guest. A
// virtio-blk disk carries its identifier as its serial; a disk without a
// serial (VZ's USB mass storage) may carry it as a stamp in its first KiB
// (api/diskstamp).
func findDisk(sysBlock, dev, id string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		devs, _ := os.ReadDir(sysBlock)
		var unnamed []string
		for _, d := range devs {
			b, err := os.ReadFile(filepath.Join(sysBlock, d.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(b)) == id {
				return filepath.Join(dev, d.Name()), nil
			}
			if (err != nil || strings.TrimSpace(string(b)) == "") && stampable(d.Name()) {
				unnamed = append(unnamed, filepath.Join(dev, d.Name()))
			}
		}
		for _, path := range unnamed {
			if got, ok := readStamp(path); ok && got == id {
				return path, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with identifier %q in %s: %w", id, sysBlock, errdefs.ErrNotFound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stampable: the kinds of disk the host may have stamped (SCSI, as USB
// mass storage shows up, and virtio-blk), not loop or RAM devices.
func stampable(name string) bool {
	return strings.HasPrefix(name, "sd") || strings.HasPrefix(name, "vd")
}

// readStamp reads the identifier stamped on the disk at path, if any.
func readStamp(path string) (string, bool) {
	head, err := diskstamp.Head(path)
	if err != nil {
		return "", false
	}
	return diskstamp.Parse(head)
}
