package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	h    Header
	data string
}

var sample = []entry{
	{h: Header{Name: "dev", Mode: TypeDir | 0o755}},
	{h: Header{Name: "dev/console", Mode: TypeChar | 0o600, Devmajor: 5, Devminor: 1}},
	{h: Header{Name: "init", Mode: TypeReg | 0o755, ModTime: 1700000000}, data: "#!agent\n"},
	{h: Header{Name: "lib", Mode: TypeDir | 0o755}},
	{h: Header{Name: "lib/a", Mode: TypeReg | 0o644, UID: 1000, GID: 100}, data: "abc"},
	{h: Header{Name: "lib/empty", Mode: TypeReg | 0o644}},
	{h: Header{Name: "sbin", Mode: TypeSymlink | 0o777, Linkname: "usr/sbin"}},
}

func write(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range entries {
		h := e.h
		h.Size = int64(len(e.data))
		if h.Type() == TypeSymlink {
			h.Size = 0
		}
		if err := w.WriteHeader(&h); err != nil {
			t.Fatalf("WriteHeader(%s): %v", h.Name, err)
		}
		if _, err := io.WriteString(w, e.data); err != nil {
			t.Fatalf("Write(%s): %v", h.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	b := write(t, sample)
	if len(b)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(b))
	}
	r := NewReader(bytes.NewReader(b))
	for _, want := range sample {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("Next (want %s): %v", want.h.Name, err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		wh := want.h
		wh.Size = int64(len(want.data))
		if wh.Type() == TypeSymlink {
			wh.Size = int64(len(wh.Linkname))
			data = nil // consumed into Linkname
		}
		if *h != wh {
			t.Errorf("header %s:\n got %+v\nwant %+v", wh.Name, *h, wh)
		}
		if string(data) != want.data {
			t.Errorf("%s: data %q, want %q", wh.Name, data, want.data)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("Next after the last entry: %v, want io.EOF", err)
	}
}

// The exact bytes of one entry, as the kernel's buffer-format.rst describes
// them: 110-byte header, name with NUL padded to 4, data padded to 4.
func TestBytes(t *testing.T) {
	b := write(t, []entry{{h: Header{Name: "ab", Mode: TypeReg | 0o644, ModTime: 16}, data: "hello"}})
	want := "070701" +
		"00000001" + "000081A4" + "00000000" + "00000000" + "00000001" + "00000010" + "00000005" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000003" + "00000000" +
		"ab\x00" + "\x00\x00\x00" + // 110+3 = 113, padded to 116
		"hello" + "\x00\x00\x00" + // 5 padded to 8
		"070701" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00" // 110+11 = 121, padded to 124
	if string(b) != want {
		t.Errorf("archive bytes:\n got %q\nwant %q", b, want)
	}
}

func TestDeterministic(t *testing.T) {
	a, b := write(t, sample), write(t, sample)
	if !bytes.Equal(a, b) {
		t.Error("two archives of the same entries differ")
	}
}

// GNU cpio, an independent reader, extracts what we wrote.
func TestGNUCpioExtracts(t *testing.T) {
	cpioBin, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("no cpio binary (Debian package cpio)")
	}
	var entries []entry
	for _, e := range sample {
		if e.h.Type() != TypeChar { // mknod needs root
			entries = append(entries, e)
		}
	}
	dir := t.TempDir()
	cmd := exec.Command(cpioBin, "-i", "-d", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(write(t, entries))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.h.Name)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("extracted: %v", err)
			continue
		}
		switch e.h.Type() {
		case TypeDir:
			if !fi.IsDir() {
				t.Errorf("%s: not a directory", e.h.Name)
			}
		case TypeSymlink:
			if target, err := os.Readlink(p); err != nil || target != e.h.Linkname {
				t.Errorf("%s: symlink to %q (%v), want %q", e.h.Name, target, err, e.h.Linkname)
			}
		case TypeReg:
			b, err := os.ReadFile(p)
			if err != nil || string(b) != e.data {
				t.Errorf("%s: content %q (%v), want %q", e.h.Name, b, err, e.data)
			}
			if got, want := uint32(fi.Mode().Perm()), e.h.Mode&0o777; got != want {
				t.Errorf("%s: mode %#o, want %#o", e.h.Name, got, want)
			}
		}
	}
}

func TestWriterErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(w *Writer) error
		want string
	}{
		{"absolute name", func(w *Writer) error {
			return w.WriteHeader(&Header{Name: "/init", Mode: TypeReg})
		}, "relative"},
		{"trailer name", func(w *Writer) error {
			return w.WriteHeader(&Header{Name: "TRAILER!!!", Mode: TypeReg})
		}, "invalid name"},
		{"no type", func(w *Writer) error {
			return w.WriteHeader(&Header{Name: "x", Mode: 0o644})
		}, "file type"},
		{"data on a directory", func(w *Writer) error {
			return w.WriteHeader(&Header{Name: "d", Mode: TypeDir, Size: 1})
		}, "only regular files"},
		{"write past size", func(w *Writer) error {
			if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 1}); err != nil {
				return err
			}
			_, err := w.Write([]byte("ab"))
			return err
		}, "past the entry's size"},
		{"short entry", func(w *Writer) error {
			if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 2}); err != nil {
				return err
			}
			return w.Close()
		}, "short"},
		{"header after close", func(w *Writer) error {
			if err := w.Close(); err != nil {
				return err
			}
			return w.WriteHeader(&Header{Name: "f", Mode: TypeReg})
		}, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do(NewWriter(io.Discard))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestReaderTruncated(t *testing.T) {
	b := write(t, sample)
	r := NewReader(bytes.NewReader(b[:len(b)/2]))
	var err error
	for err == nil {
		_, err = r.Next()
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a truncated archive: %v, want io.ErrUnexpectedEOF", err)
	}
}
