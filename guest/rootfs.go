package guest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vz-shim/containerd-shim-vz/guest/cpio"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

// WriteExt4 writes the files as a read-only ext4 image at dst, which must
// not exist: the guest's root disk (Config.RootFS), which the kernel mounts
// and runs /init from. Unlike an initramfs nothing is unpacked into guest
// memory at boot: the guest reads the pages it runs, and the VMs of a host
// share them in its page cache. The snapshotter's layer converter writes
// it, so it passes e2fsck as layers do. Equal contents give equal bytes.
func (f *Initramfs) WriteExt4(ctx context.Context, dst string) error {
	var tarball bytes.Buffer
	if err := f.writeTar(&tarball); err != nil {
		return err
	}
	if _, err := ext4.ConvertLayer(ctx, &tarball, dst, ext4.Limits{}); err != nil {
		return fmt.Errorf("root file system: %w", err)
	}
	return nil
}

// writeTar writes the files as a tar stream, parents first, owned by root,
// every entry with mtime ModTime.
func (f *Initramfs) writeTar(w io.Writer) error {
	mtime := time.Unix(f.ModTime, 0).UTC()
	tw := tar.NewWriter(w)
	for _, n := range f.names() {
		e := f.entries[n]
		h := &tar.Header{
			Name:     n,
			Mode:     int64(e.h.Mode & 0o7777),
			ModTime:  mtime,
			Format:   tar.FormatPAX,
			Linkname: e.h.Linkname,
		}
		switch e.h.Type() {
		case cpio.TypeDir:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case cpio.TypeReg:
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		case cpio.TypeSymlink:
			h.Typeflag = tar.TypeSymlink
		case cpio.TypeChar:
			h.Typeflag = tar.TypeChar
			h.Devmajor, h.Devminor = int64(e.h.Devmajor), int64(e.h.Devminor)
		default:
			return fmt.Errorf("root file system: %s: unsupported file type %#o", n, e.h.Type())
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("root file system: %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("root file system: %s: %w", n, err)
		}
	}
	return tw.Close()
}

// ext4Bytes runs WriteExt4 into a temporary file and returns the image.
func ext4Bytes(f *Initramfs) ([]byte, error) {
	dir, err := os.MkdirTemp("", "vz-guest-rootfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "rootfs")
	if err := f.WriteExt4(context.Background(), img); err != nil {
		return nil, err
	}
	return os.ReadFile(img)
}
