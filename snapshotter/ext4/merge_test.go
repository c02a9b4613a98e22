package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// openers returns re-openable layers and counts how often each is opened.
func openers(layers ...[]byte) ([]func() (io.ReadCloser, error), []int) {
	opens := make([]int, len(layers))
	var out []func() (io.ReadCloser, error)
	for i, l := range layers {
		out = append(out, func() (io.ReadCloser, error) {
			opens[i]++
			return io.NopCloser(bytes.NewReader(l)), nil
		})
	}
	return out, opens
}

func TestMerge(t *testing.T) {
	owned := func(e entry, uid int) entry { e.hdr.Uid, e.hdr.Gid = uid, uid; return e }
	l0 := buildTar(t,
		dir("a/", 0o755),
		file("a/keep", 0o644, "k0"),
		file("a/del", 0o644, "deleted"),
		dir("o/", 0o755),
		file("o/old", 0o644, "hidden by opaque"),
		dir("w/", 0o755),
		file("w/w1", 0o644, "hidden by whiteout of w"),
		file("c", 0o644, "c0"),
		file("h1", 0o644, "linked"),
		hardlink("h2", "h1"),
		hardlink("h3", "h1"),
		symlink("lnk", "a/keep"),
		symlink("s", "/etc"),
		entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o600}},
		file("dir2file/x", 0o644, "x"),
	)
	l1 := buildTar(t,
		whiteout("a/.wh.del"),
		whiteout("o/.wh..wh..opq"),
		file("o/new", 0o644, "new"),
		owned(file("c", 0o600, "c1"), 5),
		whiteout(".wh.h1"), // h2 and h3 keep the data, still linked
		owned(dir("d/", 0o700), 7),
		file("s/passwd", 0o644, "not /etc/passwd"), // upper dir hides lower symlink
		file("dir2file", 0o644, "now a file"),
	)
	l2 := buildTar(t,
		file("a/keep", 0o644, "k2"),
		owned(dir("d/", 0o750), 8),
		whiteout(".wh.lnk"),
		whiteout(".wh.w"),
		file("w/w2", 0o644, "w2"),
		file("h2", 0o644, "replaced"), // h3 alone keeps the old data
	)
	layers, opens := openers(l0, l1, l2)
	img := filepath.Join(t.TempDir(), "merged.ext4")
	st, err := Merge(context.Background(), layers, img, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	t.Logf("merged: %+v, opens %v", st, opens)

	for _, tc := range []struct{ dir, want string }{
		{"/", "a c d dir2file fifo h2 h3 lost+found o s w"},
		{"/a", "keep"},
		{"/o", "new"},
		{"/w", "w2"},
		{"/s", "passwd"},
		{"/d", ""},
	} {
		if got := strings.Join(ls(t, img, tc.dir), " "); got != tc.want {
			t.Errorf("ls %s = %q, want %q", tc.dir, got, tc.want)
		}
	}
	for _, tc := range []struct {
		path string
		want inodeInfo
		data string
	}{
		{"/a/keep", inodeInfo{Type: "regular", Mode: 0o644, Size: 2, Links: 1}, "k2"},
		{"/o/new", inodeInfo{Type: "regular", Mode: 0o644, Size: 3, Links: 1}, "new"},
		{"/c", inodeInfo{Type: "regular", Mode: 0o600, Uid: 5, Gid: 5, Size: 2, Links: 1}, "c1"},
		{"/h2", inodeInfo{Type: "regular", Mode: 0o644, Size: 8, Links: 1}, "replaced"},
		{"/h3", inodeInfo{Type: "regular", Mode: 0o644, Size: 6, Links: 1}, "linked"},
		{"/dir2file", inodeInfo{Type: "regular", Mode: 0o644, Size: 10, Links: 1}, "now a file"},
		{"/s/passwd", inodeInfo{Type: "regular", Mode: 0o644, Size: 15, Links: 1}, "not /etc/passwd"},
		{"/fifo", inodeInfo{Type: "FIFO", Mode: 0o600, Links: 1}, ""},
		{"/d", inodeInfo{Type: "directory", Mode: 0o750, Uid: 8, Gid: 8, Size: 4096, Links: 2}, ""},
		{"/s", inodeInfo{Type: "directory", Mode: 0o755, Size: 4096, Links: 2}, ""},
	} {
		got, ok := stat(t, img, tc.path)
		if !ok || got != tc.want {
			t.Errorf("stat %s = %+v (found %v), want %+v", tc.path, got, ok, tc.want)
			continue
		}
		if tc.data != "" {
			if got := string(catFile(t, img, tc.path)); got != tc.data {
				t.Errorf("cat %s = %q, want %q", tc.path, got, tc.data)
			}
		}
	}
	// No whiteout devices or opaque markers are carried.
	if ea := xattrs(t, img, "/o"); strings.Contains(ea, "overlay") {
		t.Errorf("/o carries %s", ea)
	}
	if _, ok := stat(t, img, "/a/del"); ok {
		t.Error("/a/del survived")
	}
}

// Hardlinks that survive together stay one inode; only layers that still own
// file data are read a second time.
func TestMergeHardlinks(t *testing.T) {
	l0 := buildTar(t, file("x", 0o644, "shared"), hardlink("y", "x"), hardlink("z", "x"), file("gone", 0o644, "g"))
	l1 := buildTar(t, whiteout(".wh.x"), whiteout(".wh.gone"), file("new", 0o644, ""))
	layers, opens := openers(l0, l1)
	img := filepath.Join(t.TempDir(), "merged.ext4")
	st, err := Merge(context.Background(), layers, img, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	for _, p := range []string{"/y", "/z"} {
		got, _ := stat(t, img, p)
		if got.Links != 2 || got.Size != 6 {
			t.Errorf("stat %s = %+v, want 2 links, 6 bytes", p, got)
		}
	}
	if got := strings.Join(ls(t, img, "/"), " "); got != "lost+found new y z" {
		t.Errorf("ls / = %q", got)
	}
	// l1 holds only an empty file: it is not re-read.
	if opens[0] != 2 || opens[1] != 1 {
		t.Errorf("opens = %v, want [2 1]", opens)
	}
	if st.Entries != 3 {
		t.Errorf("entries = %d, want 3", st.Entries)
	}
}

func TestMergeErrors(t *testing.T) {
	good := buildTar(t, file("a", 0o644, "a"))
	for _, tc := range []struct {
		name   string
		layers [][]byte
		lim    Limits
		want   error
	}{
		{"no layers", nil, Limits{}, errdefs.ErrInvalidArgument},
		{"dotdot", [][]byte{good, buildTar(t, file("../x", 0o644, "x"))}, Limits{}, errdefs.ErrInvalidArgument},
		{"symlink parent", [][]byte{buildTar(t, symlink("a", "/etc"), file("a/passwd", 0o644, "x"))}, Limits{}, errdefs.ErrInvalidArgument},
		{"truncated", [][]byte{good[:700]}, Limits{}, errdefs.ErrInvalidArgument},
		{"merged too many", [][]byte{good, buildTar(t, file("b", 0o644, "b"), file("c", 0o644, "c"))}, Limits{MaxEntries: 2}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layers, _ := openers(tc.layers...)
			img := filepath.Join(t.TempDir(), "merged.ext4")
			_, err := Merge(context.Background(), layers, img, tc.lim)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			t.Log(err)
			mustNotExist(t, img)
		})
	}

	// A layer that changes between the two reads.
	n := 0
	layer := func() (io.ReadCloser, error) {
		n++
		data := "first"
		if n > 1 {
			data = "other!"
		}
		return io.NopCloser(bytes.NewReader(buildTar(t, file("a", 0o644, data)))), nil
	}
	img := filepath.Join(t.TempDir(), "merged.ext4")
	if _, err := Merge(context.Background(), []func() (io.ReadCloser, error){layer}, img, Limits{}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("changed layer: err = %v", err)
	}
	mustNotExist(t, img)
}

func TestMergeCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	layers, _ := openers(buildTar(t, file("a", 0o644, "a")))
	layers = append(layers, func() (io.ReadCloser, error) {
		cancel()
		return io.NopCloser(bytes.NewReader(buildTar(t, file("b", 0o644, "b")))), nil
	})
	img := filepath.Join(t.TempDir(), "merged.ext4")
	if _, err := Merge(ctx, layers, img, DefaultLimits()); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}
	mustNotExist(t, img)
}
