// Package diskstamp is how the guest tells apart disks that carry no
// identifier of their own. Virtio-blk disks have one (the serial: QEMU's
// serial=, VZ's blockDeviceIdentifier), but USB mass storage, which is how
// VZ adds disks to a running VM, has none the host can set. So the host
// writes the identifier into the disk itself: a stamp in its first KiB,
// which ext4 never uses (the boot block, before the superblock at 1024),
// and the agent reads it back.
package diskstamp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Size is the region the stamp may use: the first KiB of the disk.
const Size = 1024

// magic starts every stamp; the identifier follows up to a newline.
const magic = "containerd-vz disk id="

// MaxID bounds the identifier, as virtio-blk's serial does.
const MaxID = 20

// Encode returns the stamp of id, Size bytes.
func Encode(id string) ([]byte, error) {
	if id == "" || len(id) > MaxID {
		return nil, fmt.Errorf("disk id %q: want 1 to %d bytes", id, MaxID)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return nil, fmt.Errorf("disk id %q: want printable ASCII without spaces", id)
		}
	}
	b := make([]byte, Size)
	copy(b, magic+id+"\n")
	return b, nil
}

// Parse returns the identifier of a stamp, or false when head (the disk's
// first bytes) carries none.
func Parse(head []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(head, []byte(magic))
	if !ok {
		return "", false
	}
	id, _, ok := bytes.Cut(rest, []byte("\n"))
	if !ok || len(id) == 0 || len(id) > MaxID {
		return "", false
	}
	return string(id), true
}

// Head reads the first Size bytes of the disk (image or device) at path,
// where a stamp would be.
func Head(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, Size)
	if _, err := io.ReadFull(f, head); err != nil {
		return nil, fmt.Errorf("reading the first KiB of %s: %w", path, err)
	}
	return head, nil
}

// ErrInUse is returned by Check for a disk whose first KiB holds data: it
// is not a file system that leaves the boot block alone.
var ErrInUse = errors.New("the first KiB of the disk is in use")

// Check tells whether head (the disk's first Size bytes) may take a stamp:
// all zero, or a stamp already.
func Check(head []byte) error {
	if len(head) < Size {
		return fmt.Errorf("disk of %d bytes: want at least %d", len(head), Size)
	}
	if _, ok := Parse(head); ok {
		return nil
	}
	for _, c := range head[:Size] {
		if c != 0 {
			return ErrInUse
		}
	}
	return nil
}
