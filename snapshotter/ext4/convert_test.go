package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// trickyLayer has one of every kind of entry the converter must carry.
func trickyLayer(t testing.TB) []byte {
	xattr := file("etc/xattr", 0o644, "x")
	xattr.hdr.PAXRecords = map[string]string{
		"SCHILY.xattr.user.foo":               "bar",
		"SCHILY.xattr.trusted.overlay.opaque": "y", // must be dropped
	}
	owned := file("home/user/owned", 0o640, "hello world")
	owned.hdr.Uid, owned.hdr.Gid = 1000, 100000
	su := file("bin/su", 0o4755, "#!/bin/true\n")
	return buildTar(t,
		dir("./", 0o700), // the root's metadata is ignored, as containerd does
		dir("etc/", 0o755),
		file("etc/empty", 0o644, ""),
		file("/etc/abs", 0o600, "absolute names are taken from the root"),
		file("./etc/dot", 0o644, "dot"),
		xattr,
		owned,
		dir("home/user/", 0o750), // directory after its child
		su,
		symlink("etc/link", "../home/user/owned"),
		file("etc/hello", 0o644, "hello"),
		hardlink("etc/hard", "etc/hello"),
		entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600, ModTime: epoch}},
		entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: epoch}},
		whiteout("etc/.wh.gone"),
		whiteout("opq/.wh..wh..opq"),
		file("opq/kept", 0o644, "kept"),
		whiteout(".wh.replaced"), // the layer recreates it as a directory: becomes opaque
		file("replaced/new", 0o644, "new"),
		whiteout(".wh.shadowed"), // the layer has it as a file: the whiteout goes
		file("shadowed", 0o644, "file"),
		whiteout(".wh..wh.plnk"), // AUFS metadata: dropped
	)
}

func TestConvertLayer(t *testing.T) {
	img, st, err := convert(t, trickyLayer(t), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	if st.Entries != 22 || st.TarBytes == 0 || st.ImageSize == 0 {
		t.Errorf("stats = %+v", st)
	}
	if fi, err := os.Stat(img); err != nil || fi.Size() != st.ImageSize {
		t.Errorf("image size %v, %v; stats say %d", fi, err, st.ImageSize)
	}

	for _, tc := range []struct {
		path  string
		want  inodeInfo
		xattr string // substring of ea_list; "-" means no xattrs
		data  string
	}{
		{path: "/", want: inodeInfo{Type: "directory", Mode: 0o755}},
		{path: "/etc", want: inodeInfo{Type: "directory", Mode: 0o755}},
		{path: "/etc/empty", want: inodeInfo{Type: "regular", Mode: 0o644, Links: 1}, data: ""},
		{path: "/etc/abs", want: inodeInfo{Type: "regular", Mode: 0o600, Size: 38, Links: 1}, data: "absolute names are taken from the root"},
		{path: "/etc/dot", want: inodeInfo{Type: "regular", Mode: 0o644, Size: 3, Links: 1}},
		{path: "/etc/xattr", want: inodeInfo{Type: "regular", Mode: 0o644, Size: 1, Links: 1}, xattr: `user.foo (3) = "bar"`},
		{path: "/home/user", want: inodeInfo{Type: "directory", Mode: 0o750}},
		{path: "/home/user/owned", want: inodeInfo{Type: "regular", Mode: 0o640, Uid: 1000, Gid: 100000, Size: 11, Links: 1}, data: "hello world", xattr: "-"},
		{path: "/bin/su", want: inodeInfo{Type: "regular", Mode: 0o4755, Size: 12, Links: 1}},
		{path: "/etc/link", want: inodeInfo{Type: "symlink", Mode: 0o777, Size: 18, Links: 1, LinkTarget: "../home/user/owned"}},
		{path: "/etc/hello", want: inodeInfo{Type: "regular", Mode: 0o644, Size: 5, Links: 2}, data: "hello"},
		{path: "/etc/hard", want: inodeInfo{Type: "regular", Mode: 0o644, Size: 5, Links: 2}, data: "hello"},
		{path: "/dev/fifo", want: inodeInfo{Type: "FIFO", Mode: 0o600, Links: 1}},
		{path: "/dev/null", want: inodeInfo{Type: "character special", Mode: 0o666, Links: 1, Major: 1, Minor: 3}},
		{path: "/etc/gone", want: inodeInfo{Type: "character special", Links: 1}},
		{path: "/opq", want: inodeInfo{Type: "directory", Mode: 0o755}, xattr: `trusted.overlay.opaque (1) = "y"`},
		{path: "/replaced", want: inodeInfo{Type: "directory", Mode: 0o755}, xattr: `trusted.overlay.opaque (1) = "y"`},
		{path: "/shadowed", want: inodeInfo{Type: "regular", Mode: 0o644, Size: 4, Links: 1}, data: "file"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			got, ok := stat(t, img, tc.path)
			if !ok {
				t.Fatalf("%s missing", tc.path)
			}
			if tc.want.Type == "directory" {
				got.Links, got.Size = 0, 0 // depend on the children
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if tc.xattr != "" {
				ea := xattrs(t, img, tc.path)
				if tc.xattr == "-" {
					if strings.Contains(ea, "=") {
						t.Errorf("unexpected xattrs: %s", ea)
					}
				} else if !strings.Contains(ea, tc.xattr) {
					t.Errorf("ea_list = %q, want %q", ea, tc.xattr)
				}
			}
			if tc.data != "" {
				if got := string(catFile(t, img, tc.path)); got != tc.data {
					t.Errorf("content %q, want %q", got, tc.data)
				}
			}
		})
	}
	if ea := xattrs(t, img, "/etc/xattr"); strings.Contains(ea, "overlay") {
		t.Errorf("trusted.overlay xattr of the layer was kept: %s", ea)
	}
	if got := ls(t, img, "/"); strings.Join(got, " ") != "bin dev etc home lost+found opq replaced shadowed" {
		t.Errorf("ls / = %v", got)
	}
}

// TestConvertLarge converts one 100 MiB file of non-zero data and reports the
// speed.
func TestConvertLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MiB conversion")
	}
	const size = 100 << 20
	pattern := func() io.Reader {
		return io.LimitReader(patternReader{}, size)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size, ModTime: epoch})
		if err == nil {
			_, err = io.Copy(tw, pattern())
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	img := filepath.Join(t.TempDir(), "big.ext4")
	start := time.Now()
	st, err := ConvertLayer(context.Background(), pr, img, DefaultLimits())
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("100 MiB layer: %v (%.0f MiB/s), %d tar bytes, image %d bytes (%.1f MiB)",
		elapsed, float64(st.TarBytes)/(1<<20)/elapsed.Seconds(), st.TarBytes, st.ImageSize, float64(st.ImageSize)/(1<<20))
	fsck(t, img)
	got, _ := stat(t, img, "/big")
	if got.Size != size || got.Type != "regular" {
		t.Errorf("stat /big = %+v", got)
	}
	want := sha256.New()
	io.Copy(want, pattern())
	have := sha256.Sum256(catFile(t, img, "/big"))
	if !bytes.Equal(have[:], want.Sum(nil)) {
		t.Error("content of /big differs")
	}
}

// patternReader yields non-zero bytes that do not repeat within a block.
type patternReader struct{}

func (patternReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7+i/4093) | 1
	}
	return len(p), nil
}

func TestConvertEmptyLayer(t *testing.T) {
	img, st, err := convert(t, buildTar(t), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	t.Logf("empty layer: image %d bytes", st.ImageSize)
	if got := ls(t, img, "/"); len(got) != 1 || got[0] != "lost+found" {
		t.Errorf("ls / = %v", got)
	}
}

func TestConvertExistingDst(t *testing.T) {
	img := filepath.Join(t.TempDir(), "layer.ext4")
	if err := os.WriteFile(img, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ConvertLayer(context.Background(), bytes.NewReader(buildTar(t, file("a", 0o644, "a"))), img, DefaultLimits())
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("err = %v, want AlreadyExists", err)
	}
	if b, _ := os.ReadFile(img); string(b) != "mine" {
		t.Fatal("existing file was touched")
	}
}

func TestConvertCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	img := filepath.Join(t.TempDir(), "layer.ext4")
	_, err := ConvertLayer(ctx, bytes.NewReader(buildTar(t, file("a", 0o644, "a"))), img, DefaultLimits())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}
	mustNotExist(t, img)

	// Cancel in the middle of a file's data.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 64 << 20})
		io.CopyN(tw, patternReader{}, 1<<20)
		cancel()
		_, err := io.Copy(tw, io.LimitReader(patternReader{}, 63<<20))
		pw.CloseWithError(err)
	}()
	img = filepath.Join(t.TempDir(), "layer.ext4")
	_, err = ConvertLayer(ctx, pr, img, DefaultLimits())
	pr.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}
	mustNotExist(t, img)
}

// Names Go's tar writer must carry in PAX records: long, non-UTF-8.
func TestConvertNames(t *testing.T) {
	long := strings.Repeat("d", 200) + "/" + strings.Repeat("f", 255)
	latin1 := "caf\xe9"
	img, _, err := convert(t, buildTar(t, file(long, 0o644, "long"), file(latin1, 0o644, "latin1"), symlink("l", strings.Repeat("t", 300))), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	if got := string(catFile(t, img, "/"+long)); got != "long" {
		t.Errorf("long name: %q", got)
	}
	if got, _ := stat(t, img, "/l"); got.Size != 300 || got.Type != "symlink" {
		t.Errorf("long symlink: %+v", got)
	}
	if names := ls(t, img, "/"); !slices.Contains(names, latin1) {
		t.Errorf("ls / = %q, want %q", names, latin1)
	}
}

func TestConvertRootWhiteouts(t *testing.T) {
	img, _, err := convert(t, buildTar(t, whiteout(".wh..wh..opq"), whiteout(".wh.x"), file("y", 0o644, "y")), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	if ea := xattrs(t, img, "/"); !strings.Contains(ea, `trusted.overlay.opaque (1) = "y"`) {
		t.Errorf("root xattrs: %s", ea)
	}
	if got, _ := stat(t, img, "/x"); got.Type != "character special" || got.Major != 0 || got.Minor != 0 {
		t.Errorf("/x = %+v", got)
	}
}

// Enough inodes for several block groups, each of which needs its padding.
func TestConvertManyGroups(t *testing.T) {
	if testing.Short() {
		t.Skip("33000 entries")
	}
	entries := []entry{dir("d/", 0o755)}
	for i := range 33000 { // a group holds at most 32768 inodes
		entries = append(entries, file(fmt.Sprintf("d/%d", i), 0o644, ""))
	}
	img, st, err := convert(t, buildTar(t, entries...), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	out := debugfs(t, img, "stats")
	if !strings.Contains(out, "Group  1:") {
		t.Fatalf("expected several block groups:\n%.2000s", out)
	}
	used := allocated(t, img)
	t.Logf("33000 files: image %d bytes, %d allocated", st.ImageSize, used)
	if used > st.ImageSize/4 {
		t.Errorf("image is not sparse: %d of %d bytes allocated", used, st.ImageSize)
	}
	fsck(t, img)
}

// Zero file data and the zero tail of the image end up as holes.
func TestConvertSparse(t *testing.T) {
	zeros := file("zeros", 0o644, "")
	zeros.data = make([]byte, 8<<20)
	zeros.hdr.Size = int64(len(zeros.data))
	img, st, err := convert(t, buildTar(t, zeros, file("after", 0o644, "after")), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	used := allocated(t, img)
	t.Logf("8 MiB of zeros: image %d bytes, %d allocated", st.ImageSize, used)
	if used > 1<<20 {
		t.Errorf("%d bytes allocated for 8 MiB of zeros", used)
	}
	if got := catFile(t, img, "/zeros"); !bytes.Equal(got, zeros.data) {
		t.Errorf("/zeros reads back %d bytes, not all zero", len(got))
	}
	if got := string(catFile(t, img, "/after")); got != "after" {
		t.Errorf("/after = %q", got)
	}
}

func allocated(t testing.TB, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}
