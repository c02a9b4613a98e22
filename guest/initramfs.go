package guest

import (
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/vz-shim/containerd-shim-vz/guest/cpio"
)

// Initramfs is a set of files to pack into a gzip-compressed newc cpio
// archive. Whatever order they are added in, the archive lists them sorted
// by path (parents first), owned by root, all with the same mtime, so equal
// contents give equal bytes.
type Initramfs struct {
	// ModTime is every entry's mtime, in seconds since the epoch.
	ModTime int64

	entries map[string]*fsEntry
}

type fsEntry struct {
	h    cpio.Header
	data []byte
}

// AddDir adds a directory with permission bits perm (sticky bit included).
func (f *Initramfs) AddDir(name string, perm uint32) error {
	return f.add(cpio.Header{Name: name, Mode: cpio.TypeDir}, perm, nil)
}

// AddFile adds a regular file.
func (f *Initramfs) AddFile(name string, perm uint32, data []byte) error {
	return f.add(cpio.Header{Name: name, Mode: cpio.TypeReg, Size: int64(len(data))}, perm, data)
}

// AddCharDevice adds a character device node.
func (f *Initramfs) AddCharDevice(name string, perm, major, minor uint32) error {
	return f.add(cpio.Header{Name: name, Mode: cpio.TypeChar, Devmajor: major, Devminor: minor}, perm, nil)
}

// AddSymlink adds a symbolic link to target.
func (f *Initramfs) AddSymlink(name, target string) error {
	return f.add(cpio.Header{Name: name, Mode: cpio.TypeSymlink, Linkname: target}, 0o777, nil)
}

// add records an entry of the type in h.Mode with permissions perm, and
// creates its missing parents as 0755 directories. Adding a path twice is an
// error, except a directory already created as a parent, which takes the
// explicit permissions.
func (f *Initramfs) add(h cpio.Header, perm uint32, data []byte) error {
	name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
	if name == "" {
		return fmt.Errorf("initramfs: invalid name %q", h.Name)
	}
	if perm&^0o7777 != 0 {
		return fmt.Errorf("initramfs: %s: invalid permissions %#o", name, perm)
	}
	h.Mode |= perm
	if f.entries == nil {
		f.entries = make(map[string]*fsEntry)
	}
	if dir := path.Dir(name); dir != "." {
		if p, ok := f.entries[dir]; ok && p.h.Type() != cpio.TypeDir {
			return fmt.Errorf("initramfs: %s: parent %s is not a directory", name, dir)
		}
		if _, ok := f.entries[dir]; !ok {
			if err := f.add(cpio.Header{Name: dir, Mode: cpio.TypeDir}, 0o755, nil); err != nil {
				return err
			}
		}
	}
	if old, ok := f.entries[name]; ok {
		if old.h.Type() != cpio.TypeDir || h.Type() != cpio.TypeDir {
			return fmt.Errorf("initramfs: %s added twice", name)
		}
	}
	h.Name = name
	f.entries[name] = &fsEntry{h: h, data: data}
	return nil
}

// names are the entries' paths, parents first: a parent's path is a prefix
// of its children's, so plain string order puts it first.
func (f *Initramfs) names() []string {
	names := make([]string, 0, len(f.entries))
	for n := range f.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// WriteCpio writes the uncompressed archive to w.
func (f *Initramfs) WriteCpio(w io.Writer) error {
	cw := cpio.NewWriter(w)
	for _, n := range f.names() {
		e := f.entries[n]
		h := e.h
		h.ModTime = f.ModTime
		if err := cw.WriteHeader(&h); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if _, err := cw.Write(e.data); err != nil {
			return fmt.Errorf("initramfs: %s: %w", n, err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// WriteGzip writes the gzip-compressed archive to w and returns the size of
// the archive before compression. The gzip header holds no file name and no
// mtime. The default level: the best one takes four times as long to save
// 0.5%.
func (f *Initramfs) WriteGzip(w io.Writer) (int64, error) {
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return 0, err
	}
	cw := &countWriter{w: zw}
	if err := f.WriteCpio(cw); err != nil {
		return cw.n, err
	}
	if err := zw.Close(); err != nil {
		return cw.n, fmt.Errorf("initramfs: gzip: %w", err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
