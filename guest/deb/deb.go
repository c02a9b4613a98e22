// Package deb reads the files of a Debian binary package (.deb): an ar
// archive whose data.tar member, compressed with xz, zstd, gzip, bzip2 or
// not at all, holds the files the package installs. It is pure Go, so the
// guest image can be built on any host.
package deb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

const (
	arMagic     = "!<arch>\n"
	arHeaderLen = 60
)

// WalkFunc is called for each entry of the package's data.tar. r reads the
// entry's content (regular files). Names are as in the tar: "./boot/vmlinuz-6.1.0-56-amd64".
type WalkFunc func(h *tar.Header, r io.Reader) error

// ErrStop, returned by a WalkFunc, ends Walk early without error.
var ErrStop = errors.New("stop walking")

// Walk calls fn for every entry of the data.tar member of the .deb read
// from r, in archive order.
func Walk(r io.Reader, fn WalkFunc) error {
	member, name, err := dataMember(r)
	if err != nil {
		return err
	}
	dr, closeFn, err := decompress(member, strings.TrimPrefix(name, "data.tar"))
	if err != nil {
		return fmt.Errorf("deb: %s: %w", name, err)
	}
	defer closeFn()
	tr := tar.NewReader(dr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deb: %s: %w", name, err)
		}
		if err := fn(h, tr); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
}

// dataMember finds the data.tar.* member of the ar archive in r and returns
// a reader of its content and its name.
func dataMember(r io.Reader) (io.Reader, string, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic := make([]byte, len(arMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != arMagic {
		return nil, "", errors.New("deb: not an ar archive")
	}
	var hdr [arHeaderLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if err == io.EOF {
				return nil, "", errors.New("deb: no data.tar member")
			}
			return nil, "", fmt.Errorf("deb: reading ar header: %w", err)
		}
		if string(hdr[58:60]) != "`\n" {
			return nil, "", errors.New("deb: corrupt ar header")
		}
		// GNU ar ends names with "/"; dpkg pads them with spaces.
		name := strings.TrimSuffix(strings.TrimRight(string(hdr[:16]), " "), "/")
		size, err := strconv.ParseInt(strings.TrimRight(string(hdr[48:58]), " "), 10, 64)
		if err != nil || size < 0 {
			return nil, "", fmt.Errorf("deb: ar member %s: bad size", name)
		}
		if strings.HasPrefix(name, "data.tar") {
			return io.LimitReader(br, size), name, nil
		}
		// Members are aligned to 2 bytes.
		if _, err := br.Discard(int(size + size%2)); err != nil {
			return nil, "", fmt.Errorf("deb: ar member %s: %w", name, err)
		}
	}
}

func decompress(r io.Reader, ext string) (io.Reader, func(), error) {
	nop := func() {}
	switch ext {
	case "":
		return r, nop, nil
	case ".xz":
		xr, err := xz.NewReader(r)
		return xr, nop, err
	case ".zst":
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	case ".gz":
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return gr, func() { gr.Close() }, nil
	case ".bz2":
		return bzip2.NewReader(r), nop, nil
	}
	return nil, nil, fmt.Errorf("unknown compression %q", ext)
}

// Decompress returns the content of a file compressed as the name's
// extension says (.xz, .zst, .gz), or data itself for any other name. The
// kernel's module files are named so.
func Decompress(name string, data []byte) ([]byte, error) {
	var ext string
	for _, e := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(name, e) {
			ext = e
		}
	}
	if ext == "" {
		return data, nil
	}
	r, closeFn, err := decompress(bytes.NewReader(data), ext)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer closeFn()
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}
