package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/api/diskstamp"
)

// StampedClones matches the clones StampDisk makes in its dir, for a
// cleanup after a crash.
const StampedClones = "stamped-*.img"

// StampedDisk is a disk ready to attach where it carries no identifier of
// its own (USB mass storage): the image to attach, with d.ID stamped in its
// first KiB (api/diskstamp), and the clone made for it, if any.
type StampedDisk struct {
	Path string
	// Clone is Path when it is a private clone the caller removes once the
	// disk is detached; "" when the disk itself was stamped.
	Clone string
}

// StampDisk stamps d.ID on the disk for the guest to find it by. A
// writable disk is the container's own and is stamped in place. A
// read-only one is a layer that other containers and the snapshotter
// share: it is stamped on a copy-on-write clone in dir (APFS clonefile, a
// reflink on Linux where the file system can). A disk whose first KiB is in
// use (not a file system that leaves its boot block alone) is refused:
// stamping it would break it.
func StampDisk(d Disk, dir string) (StampedDisk, error) {
	path, err := ReadableFile("disk "+d.ID, d.Path)
	if err != nil {
		return StampedDisk{}, err
	}
	stamp, err := diskstamp.Encode(d.ID)
	if err != nil {
		return StampedDisk{}, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := checkStampable(path); err != nil {
		return StampedDisk{}, fmt.Errorf("disk %s (%s): %v: the guest could not tell it apart: %w", d.ID, path, err, errdefs.ErrInvalidArgument)
	}
	s := StampedDisk{Path: path}
	if d.ReadOnly {
		sum := sha256.Sum256([]byte(d.ID))
		s.Clone = filepath.Join(dir, "stamped-"+hex.EncodeToString(sum[:8])+".img")
		if err := cloneFile(path, s.Clone); err != nil {
			os.Remove(s.Clone)
			return StampedDisk{}, fmt.Errorf("disk %s: cloning %s: %w", d.ID, path, err)
		}
		s.Path = s.Clone
	}
	if err := writeStamp(s.Path, stamp); err != nil {
		s.Remove()
		return StampedDisk{}, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	return s, nil
}

// Remove removes the clone, if one was made.
func (s StampedDisk) Remove() error {
	if s.Clone == "" {
		return nil
	}
	if err := os.Remove(s.Clone); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// checkStampable reads the disk's first KiB: zero, or a stamp already.
func checkStampable(path string) error {
	head, err := diskstamp.Head(path)
	if err != nil {
		return err
	}
	return diskstamp.Check(head)
}

func writeStamp(path string, stamp []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(stamp, 0); err != nil {
		f.Close()
		return fmt.Errorf("stamping %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("stamping %s: %w", path, err)
	}
	return f.Close()
}
