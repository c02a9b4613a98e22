package ext4

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCreateWritable(t *testing.T) {
	// Sizes continuity v0.5.0 gets wrong without fixBlockBitmaps: partial
	// last groups (200 MiB, 1000 MiB, 5000 MiB) and metadata spilling out of
	// group 0 (8 GiB and up).
	for _, size := range []int64{64 << 20, 200 << 20, 256 << 20, 1000 << 20, 5000 << 20, 8 << 30, 10 << 30, 64<<30 + 4096*1000} {
		img := filepath.Join(t.TempDir(), "rw.ext4")
		size &^= 4095
		if err := CreateWritable(img, size); err != nil {
			t.Fatal(err)
		}
		fsck(t, img)
		fi, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		used := allocated(t, img)
		t.Logf("writable %d MiB: apparent %d bytes, allocated %d bytes", size>>20, fi.Size(), used)
		if fi.Size() != size || used > size/8 {
			t.Errorf("apparent %d, allocated %d: want %d, sparse", fi.Size(), used, size)
		}
		if err := CreateWritable(img, size); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("second create: %v, want AlreadyExists", err)
		}
	}
	img := filepath.Join(t.TempDir(), "small.ext4")
	if err := CreateWritable(img, 1<<20); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("1 MiB: %v, want InvalidArgument", err)
	}
	mustNotExist(t, img)
}
