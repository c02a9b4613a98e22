package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func zstded(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// corrupt flips bytes in the middle of b.
func corrupt(b []byte) []byte {
	c := bytes.Clone(b)
	for i := len(c) / 2; i < len(c)/2+16 && i < len(c); i++ {
		c[i] ^= 0x5a
	}
	return c
}

func TestConvertHostile(t *testing.T) {
	big := file("big", 0o644, "")
	big.hdr.Size = 2 << 20
	big.data = bytes.Repeat([]byte{1}, 2<<20)
	valid := buildTar(t, dir("d/", 0o755), big, file("d/f", 0o644, "data"))
	small := Limits{MaxFileSize: 1 << 20}
	fat := file("fat", 0o644, "x")
	fat.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.fat": string(bytes.Repeat([]byte{'v'}, 5000))}

	for _, tc := range []struct {
		name   string
		data   []byte
		lim    Limits
		decomp bool // read through Decompress
	}{
		{name: "dotdot", data: buildTar(t, file("../x", 0o644, "x"))},
		{name: "abs dotdot", data: buildTar(t, file("/etc/../../x", 0o644, "x"))},
		{name: "inner dotdot", data: buildTar(t, file("a/../../x", 0o644, "x"))},
		{name: "hardlink escape", data: buildTar(t, hardlink("x", "../../etc/passwd"))},
		{name: "hardlink unseen", data: buildTar(t, hardlink("x", "etc/passwd"))},
		{name: "hardlink forward", data: buildTar(t, hardlink("x", "y"), file("y", 0o644, "y"))},
		{name: "hardlink dir", data: buildTar(t, dir("d/", 0o755), hardlink("x", "d"))},
		{name: "hardlink via symlink", data: buildTar(t, dir("etc/", 0o755), file("etc/passwd", 0o644, "p"), symlink("a", "etc"), hardlink("x", "a/passwd"))},
		{name: "symlink parent", data: buildTar(t, symlink("a", "/etc"), file("a/passwd", 0o644, "root::0:0::/:/bin/sh"))},
		{name: "symlink parent hardlinked", data: buildTar(t, symlink("a", "/etc"), hardlink("b", "a"), file("b/passwd", 0o644, "x"))},
		{name: "file parent", data: buildTar(t, file("a", 0o644, "a"), file("a/b", 0o644, "b"))},
		{name: "whiteout parent", data: buildTar(t, file(".wh.a/b", 0o644, "b"))},
		{name: "file over dir", data: buildTar(t, dir("a/", 0o755), file("a", 0o644, "a"))},
		{name: "file over implied dir", data: buildTar(t, file("a/b", 0o644, "b"), symlink("a", "/etc"))},
		{name: "duplicate file", data: buildTar(t, file("a", 0o644, "a"), file("a", 0o644, "b"))},
		{name: "long name", data: buildTar(t, file(string(bytes.Repeat([]byte{'n'}, 256)), 0o644, "x"))},
		{name: "file size limit", data: valid, lim: small},
		{name: "image size limit", data: valid, lim: Limits{MaxImageSize: 1 << 20}},
		{name: "too many entries", data: valid, lim: Limits{MaxEntries: 2}},
		{name: "device range", data: buildTar(t, entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 5000}})},
		{name: "unknown type", data: buildTar(t, entry{hdr: tar.Header{Typeflag: '7', Name: "c"}})},
		{name: "bad whiteout", data: buildTar(t, whiteout("d/.wh."))},
		{name: "xattr too big", data: buildTar(t, fat)}, // refused by tar2ext4 itself
		{name: "truncated data", data: valid[:len(valid)/2]},
		{name: "truncated at entry", data: valid[:len(valid)-1024]},
		{name: "empty stream", data: nil},
		{name: "truncated after whiteout data", data: func() []byte {
			b := buildTar(t, file("a", 0o644, "a"), file(".wh.x", 0o644, strings.Repeat("w", 1000)))
			return b[:len(b)-1024]
		}()},
		{name: "truncated header", data: valid[:1024+100]},
		{name: "garbage", data: bytes.Repeat([]byte("not a tar "), 100)},
		{name: "trailing garbage", data: append(bytes.Clone(valid), bytes.Repeat([]byte{7}, 2<<20)...)},
		{name: "corrupt gzip", data: corrupt(gzipped(t, valid)), decomp: true},
		{name: "truncated gzip", data: gzipped(t, valid)[:300], decomp: true},
		{name: "gzip bad checksum", data: func() []byte {
			b := gzipped(t, valid)
			b[len(b)-6] ^= 1 // CRC32 in the trailer
			return b
		}(), decomp: true},
		{name: "corrupt zstd", data: corrupt(zstded(t, valid)), decomp: true},
		{name: "truncated zstd", data: zstded(t, valid)[:200], decomp: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// dst sits below a directory of its own; anything written
			// beside it or above would show up in root.
			root := t.TempDir()
			canary := filepath.Join(root, "canary")
			if err := os.MkdirAll(filepath.Join(canary, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(canary, "etc", "layer.ext4")
			var r = bytes.NewReader(tc.data)
			var src interface{ Read([]byte) (int, error) } = r
			if tc.decomp {
				rc, err := Decompress(r)
				if err != nil {
					if !errors.Is(err, errdefs.ErrInvalidArgument) {
						t.Fatalf("Decompress: %v", err)
					}
					return
				}
				defer rc.Close()
				src = rc
			}
			lim := tc.lim
			if lim == (Limits{}) {
				lim = DefaultLimits()
			}
			_, err := ConvertLayer(context.Background(), src, dst, lim)
			if err == nil {
				t.Fatal("conversion succeeded")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
			t.Log(err)
			mustNotExist(t, dst)
			var found []string
			filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
				if p != root && p != canary && p != filepath.Join(canary, "etc") {
					found = append(found, p)
				}
				return nil
			})
			if len(found) != 0 {
				t.Fatalf("files left behind: %v", found)
			}
		})
	}
}
