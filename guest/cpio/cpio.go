// Package cpio reads and writes cpio archives in the "newc" format (SVR4
// without checksums, magic 070701): the format the Linux kernel unpacks as an
// initramfs. See the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.
//
// The Writer assigns inode numbers itself, in order, and writes nothing that
// depends on the machine or the clock, so equal input gives equal bytes.
package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// File types, as in the type bits of Header.Mode (the S_IF* values).
const (
	TypeMask    = 0o170000
	TypeFifo    = 0o010000
	TypeChar    = 0o020000
	TypeDir     = 0o040000
	TypeBlock   = 0o060000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeSocket  = 0o140000
)

const (
	magic      = "070701"
	headerLen  = 110
	trailer    = "TRAILER!!!"
	maxNameLen = 4096 // PATH_MAX: the kernel ignores longer names
)

// Header describes one archive entry.
type Header struct {
	Name     string // path without a leading "/": "usr/bin/runc"
	Mode     uint32 // type bits | permission bits: TypeReg|0o755
	UID, GID uint32
	ModTime  int64  // seconds since the epoch
	Size     int64  // bytes of data that follow; for a symlink, len(Linkname)
	Linkname string // symlink target
	// Devmajor and Devminor are the device number of a TypeChar or TypeBlock node.
	Devmajor, Devminor uint32
}

// Type returns the type bits of h.Mode.
func (h *Header) Type() uint32 { return h.Mode & TypeMask }

// Writer writes a newc archive. Call WriteHeader, then Write up to Size
// bytes, for each entry, and Close at the end.
type Writer struct {
	w      io.Writer
	ino    uint32
	left   int64 // data bytes the current entry still expects
	pad    int   // padding after the current entry's data
	err    error
	closed bool
}

// NewWriter returns a Writer that writes the archive to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteHeader finishes the previous entry and starts a new one. For a
// symlink it writes the target as the entry's data and needs no Write.
func (w *Writer) WriteHeader(h *Header) error {
	if err := w.finishEntry(); err != nil {
		return err
	}
	if err := validate(h); err != nil {
		return err
	}
	size := h.Size
	if h.Type() == TypeSymlink {
		size = int64(len(h.Linkname))
	} else if h.Type() != TypeReg && size != 0 {
		return fmt.Errorf("cpio: %s: only regular files and symlinks have data", h.Name)
	}
	w.ino++
	nlink := uint32(1)
	if h.Type() == TypeDir {
		nlink = 2
	}
	if err := w.writeHeader(w.ino, h.Mode, h.UID, h.GID, nlink, h.ModTime, size, h.Devmajor, h.Devminor, h.Name); err != nil {
		return err
	}
	w.left = size
	w.pad = padding(size)
	if h.Type() == TypeSymlink {
		_, err := io.WriteString(w, h.Linkname)
		return err
	}
	return nil
}

func validate(h *Header) error {
	switch {
	case h.Name == "" || h.Name == trailer:
		return fmt.Errorf("cpio: invalid name %q", h.Name)
	case strings.HasPrefix(h.Name, "/"):
		return fmt.Errorf("cpio: %s: name must be relative", h.Name)
	case len(h.Name) >= maxNameLen:
		return fmt.Errorf("cpio: %s: name too long", h.Name)
	case strings.IndexByte(h.Name, 0) >= 0:
		return fmt.Errorf("cpio: %q: name contains NUL", h.Name)
	case h.Size < 0 || h.Size > 0xffffffff:
		return fmt.Errorf("cpio: %s: size %d out of range", h.Name, h.Size)
	case h.ModTime < 0 || h.ModTime > 0xffffffff:
		return fmt.Errorf("cpio: %s: mtime %d out of range", h.Name, h.ModTime)
	}
	switch h.Type() {
	case TypeFifo, TypeChar, TypeDir, TypeBlock, TypeReg, TypeSymlink, TypeSocket:
		return nil
	}
	return fmt.Errorf("cpio: %s: invalid file type %#o", h.Name, h.Type())
}

// Write writes data of the current entry, at most the Size given to WriteHeader.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if int64(len(p)) > w.left {
		return 0, errors.New("cpio: write past the entry's size")
	}
	n, err := w.w.Write(p)
	w.left -= int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	w.closed = true
	return w.writeHeader(0, 0, 0, 0, 1, 0, 0, 0, 0, trailer)
}

func (w *Writer) finishEntry() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("cpio: writer closed")
	}
	if w.left != 0 {
		return fmt.Errorf("cpio: entry is %d bytes short", w.left)
	}
	if w.pad > 0 {
		if _, err := w.w.Write(make([]byte, w.pad)); err != nil {
			w.err = err
			return err
		}
		w.pad = 0
	}
	return nil
}

func (w *Writer) writeHeader(ino, mode, uid, gid, nlink uint32, mtime, size int64, rmajor, rminor uint32, name string) error {
	nameLen := len(name) + 1 // with its NUL
	b := make([]byte, 0, headerLen+nameLen+3)
	b = append(b, magic...)
	for _, v := range []uint32{
		ino, mode, uid, gid, nlink, uint32(mtime), uint32(size),
		0, 0, // devmajor, devminor: the archive's own device, meaningless here
		rmajor, rminor,
		uint32(nameLen),
		0, // check: newc (070701) has none
	} {
		b = fmt.Appendf(b, "%08X", v)
	}
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, make([]byte, padding(int64(len(b))))...)
	if _, err := w.w.Write(b); err != nil {
		w.err = err
		return err
	}
	return nil
}

// padding returns how many zero bytes align n to 4.
func padding(n int64) int { return int((4 - n%4) % 4) }

// Reader reads a newc archive.
type Reader struct {
	r    *bufio.Reader
	left int64 // unread data of the current entry
	pad  int
	done bool
}

// NewReader returns a Reader of the archive in r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReader(r)} }

// Next skips what is left of the current entry and returns the next
// header, or io.EOF after the trailer. A symlink's target is in Linkname.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if _, err := r.r.Discard(int(r.left) + r.pad); err != nil {
		return nil, unexpected(err)
	}
	r.left, r.pad = 0, 0

	var raw [headerLen]byte
	if _, err := io.ReadFull(r.r, raw[:]); err != nil {
		return nil, unexpected(err)
	}
	if string(raw[:6]) != magic {
		return nil, fmt.Errorf("cpio: bad magic %q", raw[:6])
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("cpio: bad header field %d: %w", i, err)
		}
		f[i] = uint32(v)
	}
	nameLen := int(f[11])
	if nameLen < 1 || nameLen > maxNameLen {
		return nil, fmt.Errorf("cpio: bad name length %d", nameLen)
	}
	name := make([]byte, nameLen+padding(int64(headerLen+nameLen)))
	if _, err := io.ReadFull(r.r, name); err != nil {
		return nil, unexpected(err)
	}
	h := &Header{
		Name:     string(name[:nameLen-1]),
		Mode:     f[1],
		UID:      f[2],
		GID:      f[3],
		ModTime:  int64(f[5]),
		Size:     int64(f[6]),
		Devmajor: f[9],
		Devminor: f[10],
	}
	if h.Name == trailer {
		r.done = true
		return nil, io.EOF
	}
	r.left, r.pad = h.Size, padding(h.Size)
	if h.Type() == TypeSymlink {
		target := make([]byte, h.Size)
		if _, err := io.ReadFull(r, target); err != nil {
			return nil, unexpected(err)
		}
		h.Linkname = string(target)
	}
	return h, nil
}

// Read reads data of the current entry.
func (r *Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= int64(n)
	return n, unexpected(err)
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
