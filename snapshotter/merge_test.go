package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

// recordMerge is a fake ext4.Merge that writes the concatenated layer
// streams (bottom first) to dst.
func recordMerge(ctx context.Context, layers []func() (io.ReadCloser, error), dst string, _ ext4.Limits) (ext4.Stats, error) {
	var buf bytes.Buffer
	for _, open := range layers {
		rc, err := open()
		if err != nil {
			return ext4.Stats{}, err
		}
		_, err = io.Copy(&buf, rc)
		rc.Close()
		if err != nil {
			return ext4.Stats{}, err
		}
		buf.WriteString("|")
	}
	return ext4.Stats{}, os.WriteFile(dst, buf.Bytes(), 0o644)
}

func TestMergedMounts(t *testing.T) {
	ctx := testContext(t)
	p := newMemProvider()
	sn := newTestSnapshotter(t, Config{MaxLayers: 3, Content: p})
	sn.merge = recordMerge
	ids := chain(t, ctx, sn, p, 5) // l1 (bottom) .. l5

	got, err := sn.Prepare(ctx, "c", "l5")
	if err != nil {
		t.Fatal(err)
	}
	merged := sn.mergedPath(ids[2]) // l3 is the topmost merged layer
	want := []mount.Mount{
		{Type: "ext4", Source: filepath.Join(sn.dir(ids[4]), LayerImage), Options: []string{"ro", "loop"}},
		{Type: "ext4", Source: filepath.Join(sn.dir(ids[3]), LayerImage), Options: []string{"ro", "loop"}},
		{Type: "ext4", Source: merged, Options: []string{"ro", "loop"}},
	}
	if !reflect.DeepEqual(got[1:4], want) || len(got) != 5 || got[4].Options[4] != "lowerdir={{ overlay 1 3 }}" {
		t.Fatalf("mounts:\n got %+v\nwant rw, %+v, overlay 1 3", got, want)
	}
	b, err := os.ReadFile(merged)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "tar of l1|tar of l2|tar of l3|" {
		t.Fatalf("merged from %q, want l1..l3 bottom first", b)
	}

	// A view of the same chain reuses the image.
	if err := os.WriteFile(merged, []byte("cached"), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := sn.View(ctx, "v", "l5")
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 4 || v[2].Source != merged || v[3].Options[1] != "lowerdir={{ overlay 0 2 }}" {
		t.Fatalf("view mounts: %+v", v)
	}
	if b, _ := os.ReadFile(merged); string(b) != "cached" {
		t.Fatal("merged image rebuilt")
	}

	// Removing the topmost merged snapshot removes the image.
	for _, key := range []string{"c", "v", "l5", "l4", "l3"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(merged); !os.IsNotExist(err) {
		t.Fatalf("merged image survived its snapshot: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(sn.root, mergedDir)); len(entries) != 0 {
		t.Fatalf("left in merged/: %v", entries)
	}
}

func TestMergeBlobGone(t *testing.T) {
	ctx := testContext(t)
	p := newMemProvider()
	sn := newTestSnapshotter(t, Config{MaxLayers: 1, Content: p})
	sn.merge = recordMerge
	chain(t, ctx, sn, p, 2)
	p.blobs = map[string][]byte{}

	_, err := sn.Prepare(ctx, "c", "l2")
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "gone from containerd's content store") {
		t.Fatalf("Prepare over a chain with a missing blob = %v", err)
	}
	if _, err := sn.Stat(ctx, "c"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed Prepare left a snapshot: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(sn.root, mergedDir)); len(entries) != 0 {
		t.Fatalf("left in merged/: %v", entries)
	}
}

func TestMergeNoContentStore(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{MaxLayers: 1})
	chain(t, ctx, sn, nil, 2)
	if _, err := sn.View(ctx, "v", "l2"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("View = %v, want FailedPrecondition", err)
	}
}

func tarLayer(t *testing.T, files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRealMerge runs the merge path with ext4.Merge and ext4.Decompress.
func TestRealMerge(t *testing.T) {
	ctx := testContext(t)
	p := newMemProvider()
	sn := newTestSnapshotter(t, Config{MaxLayers: 2, Content: p})
	sn.decompress = ext4.Decompress
	parent := ""
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("l%d", i)
		key := "extract-1 " + name
		ms, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatal(err)
		}
		dir, _ := SnapshotDirFromMounts(sn.root, ms)
		desc := p.add(testNS, tarLayer(t, map[string]string{name: name}))
		if err := os.WriteFile(filepath.Join(dir, LayerImage), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := WriteLayerInfo(dir, LayerInfo{Blob: desc, Namespace: testNS}); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, name, key); err != nil {
			t.Fatal(err)
		}
		parent = name
	}
	ms, err := sn.View(ctx, "v", "l3")
	if errdefs.IsNotImplemented(err) {
		t.Skipf("ext4 not implemented yet: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || filepath.Dir(ms[1].Source) != filepath.Join(sn.root, mergedDir) {
		t.Fatalf("mounts: %+v", ms)
	}
	if fi, err := os.Stat(ms[1].Source); err != nil || fi.Size() == 0 {
		t.Fatalf("merged image: %v %v", fi, err)
	}
}

// TestConcurrentPrepare has containers prepared at once on one long chain:
// the merged image is built once and shared.
func TestConcurrentPrepare(t *testing.T) {
	ctx := testContext(t)
	p := newMemProvider()
	sn := newTestSnapshotter(t, Config{MaxLayers: 2, Content: p})
	var merges atomic.Int32
	sn.merge = func(ctx context.Context, layers []func() (io.ReadCloser, error), dst string, lim ext4.Limits) (ext4.Stats, error) {
		merges.Add(1)
		return recordMerge(ctx, layers, dst, lim)
	}
	chain(t, ctx, sn, p, 4)

	var wg sync.WaitGroup
	errs := make([]error, 8)
	mounts := make([][]mount.Mount, 8)
	for i := range errs {
		wg.Go(func() {
			mounts[i], errs[i] = sn.Prepare(ctx, fmt.Sprintf("c%d", i), "l4")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(mounts[i][1:3], mounts[0][1:3]) {
			t.Fatalf("container %d lowers %+v, container 0 %+v", i, mounts[i][1:3], mounts[0][1:3])
		}
	}
	if n := merges.Load(); n != 1 {
		t.Fatalf("%d merges, want 1", n)
	}
}
