package ext4

import (
	"errors"
	"fmt"
	"os"

	cext4 "github.com/containerd/continuity/pkg/ext4"
	"github.com/containerd/errdefs"
)

// minWritableSize is the smallest image continuity's pkg/ext4 formats.
const minWritableSize = 64 << 20

func createWritable(path string, size int64) (retErr error) {
	if size < minWritableSize {
		return fmt.Errorf("writable ext4 image of %d bytes: at least %d needed: %w", size, minWritableSize, errdefs.ErrInvalidArgument)
	}
	// Claim the name first: ext4.Create truncates whatever is there.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("ext4 image %s: %w", path, errdefs.ErrAlreadyExists)
		}
		return fmt.Errorf("creating writable ext4 image: %w", err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if err := cext4.Create(path, size); err != nil {
		return fmt.Errorf("formatting writable ext4 image: %w", err)
	}
	if err := fixBlockBitmaps(f); err != nil {
		return err
	}
	// continuity already pads its inode bitmaps; this keeps the guarantee
	// should that change.
	if err := setInodeBitmapPadding(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing writable ext4 image: %w", err)
	}
	return f.Close()
}
