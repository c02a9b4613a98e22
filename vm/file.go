package vm

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// ReadableFile checks that path names a regular file that can be opened,
// as the kernel and initrd of a Config must, and returns it absolute. The
// error names the path, keeps errors.Is(err, fs.ErrNotExist) working, and
// wraps errdefs.ErrInvalidArgument.
func ReadableFile(what, path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%s not set: %w", what, errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %w", what, path, err, errdefs.ErrInvalidArgument)
	}
	f, err := os.Open(abs)
	if err != nil {
		return "", fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s is not a regular file: %w", what, abs, errdefs.ErrInvalidArgument)
	}
	return abs, nil
}

// BootFiles checks the kernel and the initrd or root disk of cfg, exactly
// one of the two (ReadableFile), and returns them absolute.
func BootFiles(cfg Config) (kernel, initrd, rootDisk string, err error) {
	if kernel, err = ReadableFile("kernel", cfg.Kernel); err != nil {
		return "", "", "", err
	}
	switch {
	case cfg.Initrd != "" && cfg.RootDisk != "":
		return "", "", "", fmt.Errorf("both an initrd and a root disk: boot one: %w", errdefs.ErrInvalidArgument)
	case cfg.RootDisk != "":
		rootDisk, err = ReadableFile("root disk", cfg.RootDisk)
	default:
		initrd, err = ReadableFile("initrd", cfg.Initrd)
	}
	if err != nil {
		return "", "", "", err
	}
	for _, d := range cfg.Disks {
		if d.ID == RootDiskID {
			return "", "", "", fmt.Errorf("disk id %q is the root disk's: %w", d.ID, errdefs.ErrInvalidArgument)
		}
	}
	return kernel, initrd, rootDisk, nil
}
