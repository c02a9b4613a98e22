package deb

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/guest/internal/fake"
)

var files = []fake.File{
	{Name: "boot/"},
	{Name: "boot/vmlinuz-6.1.0-1-amd64", Data: []byte("kernel")},
	{Name: "lib/modules/6.1.0-1-amd64/kernel/a.ko", Data: bytes.Repeat([]byte("module"), 1000)},
}

func TestWalk(t *testing.T) {
	for _, ext := range []string{"", ".gz", ".xz", ".zst"} {
		t.Run("data.tar"+ext, func(t *testing.T) {
			pkg, err := fake.Deb(ext, files)
			if err != nil {
				t.Fatal(err)
			}
			var got []fake.File
			err = Walk(bytes.NewReader(pkg), func(h *tar.Header, r io.Reader) error {
				b, err := io.ReadAll(r)
				name := strings.TrimPrefix(h.Name, "./")
				if h.Typeflag == tar.TypeDir {
					b = nil
				}
				got = append(got, fake.File{Name: name, Data: b})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, files) {
				t.Errorf("Walk saw %d entries, want %d: %q", len(got), len(files), got)
			}
		})
	}
}

func TestWalkStop(t *testing.T) {
	pkg, err := fake.Deb(".xz", files)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = Walk(bytes.NewReader(pkg), func(*tar.Header, io.Reader) error {
		n++
		return ErrStop
	})
	if err != nil || n != 1 {
		t.Errorf("Walk stopped with %v after %d entries, want nil after 1", err, n)
	}
	boom := errors.New("boom")
	if err := Walk(bytes.NewReader(pkg), func(*tar.Header, io.Reader) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Walk returned %v, want the callback's error", err)
	}
}

func TestWalkErrors(t *testing.T) {
	nop := func(*tar.Header, io.Reader) error { return nil }
	if err := Walk(strings.NewReader("PK\x03\x04 not a deb"), nop); err == nil || !strings.Contains(err.Error(), "not an ar archive") {
		t.Errorf("a zip file: %v", err)
	}
	if err := Walk(strings.NewReader("!<arch>\n"), nop); err == nil || !strings.Contains(err.Error(), "no data.tar") {
		t.Errorf("an empty ar archive: %v", err)
	}
	pkg, err := fake.Deb(".xz", files)
	if err != nil {
		t.Fatal(err)
	}
	if err := Walk(bytes.NewReader(pkg[:len(pkg)-100]), nop); err == nil {
		t.Error("a truncated package: no error")
	}
}

func TestDecompress(t *testing.T) {
	data := bytes.Repeat([]byte("\x7fELF module"), 100)
	for _, ext := range []string{"", ".gz", ".xz", ".zst"} {
		z, err := fake.Compress(ext, data)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decompress("kernel/fs/a.ko"+ext, z)
		if err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("Decompress(a.ko%s) returned other bytes", ext)
		}
	}
	if _, err := Decompress("a.ko.xz", []byte("not xz")); err == nil || !strings.Contains(err.Error(), "a.ko.xz") {
		t.Errorf("corrupt file: %v, want an error naming it", err)
	}
}
