package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
)

func TestCommitStatUsage(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	id := commitLayer(t, ctx, sn, nil, "base", "")

	info, err := sn.Stat(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Name != "base" || info.Parent != "" {
		t.Fatalf("Stat = %+v", info)
	}
	if info.Labels["containerd.io/gc.root"] != "x" {
		t.Fatalf("commit labels lost: %v", info.Labels)
	}
	if _, err := os.Stat(filepath.Join(sn.dir(id), LayerImage)); err != nil {
		t.Fatal(err)
	}
	u, err := sn.Usage(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if u.Inodes != 3 || u.Size <= 0 {
		t.Fatalf("Usage = %+v, want 3 inodes and some bytes", u)
	}
	if _, err := sn.Stat(ctx, "extract-1 base"); !errdefs.IsNotFound(err) {
		t.Fatalf("active key still there after commit: %v", err)
	}
	if _, err := sn.Mounts(ctx, "base"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Mounts of a committed snapshot: %v", err)
	}
}

func TestCommitWithoutApply(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	for _, key := range []string{"container", "extract-2 sha256:abc"} {
		if _, err := sn.Prepare(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
		err := sn.Commit(ctx, "committed-"+key, key)
		if !errdefs.IsNotImplemented(err) {
			t.Fatalf("Commit(%q) without apply = %v, want NotImplemented", key, err)
		}
		if info, err := sn.Stat(ctx, key); err != nil || info.Kind != snapshots.KindActive {
			t.Fatalf("%q after failed commit: %+v %v", key, info, err)
		}
	}
}

func TestRemove(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	baseID := commitLayer(t, ctx, sn, nil, "base", "")
	if _, err := sn.Prepare(ctx, "child", "base"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "base"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Remove of a parent = %v, want FailedPrecondition", err)
	}
	if err := sn.Remove(ctx, "child"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.dir(baseID)); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir left behind: %v", err)
	}
	if err := sn.Remove(ctx, "base"); !errdefs.IsNotFound(err) {
		t.Fatalf("second Remove = %v, want NotFound", err)
	}
	entries, _ := os.ReadDir(SnapshotsDir(sn.root))
	if len(entries) != 0 {
		t.Fatalf("left in snapshots/: %v", entries)
	}
}

func TestUpdateWalk(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	commitLayer(t, ctx, sn, nil, "base", "")
	if _, err := sn.Prepare(ctx, "c", "base", snapshots.WithLabels(map[string]string{"a": "1"})); err != nil {
		t.Fatal(err)
	}

	info, err := sn.Update(ctx, snapshots.Info{Name: "base", Labels: map[string]string{
		"containerd.io/gc.ref.content.l.0": "sha256:abc", "b": "2",
	}}, "labels.containerd.io/gc.ref.content.l.0")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"containerd.io/gc.root": "x", "containerd.io/gc.ref.content.l.0": "sha256:abc"}
	if !reflect.DeepEqual(info.Labels, want) {
		t.Fatalf("labels after Update of one field: %v, want %v", info.Labels, want)
	}
	info, err = sn.Update(ctx, snapshots.Info{Name: "base", Labels: map[string]string{"c": "3"}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info.Labels, map[string]string{"c": "3"}) {
		t.Fatalf("labels after full Update: %v", info.Labels)
	}
	if _, err := sn.Update(ctx, snapshots.Info{Name: "base", Parent: "x"}, "parent"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Update of parent = %v, want InvalidArgument", err)
	}

	walk := func(filters ...string) []string {
		var names []string
		if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			names = append(names, i.Name)
			return nil
		}, filters...); err != nil {
			t.Fatal(err)
		}
		return names
	}
	if got := walk(); len(got) != 2 {
		t.Fatalf("Walk() = %v", got)
	}
	if got := walk("kind==active"); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("Walk(kind==active) = %v", got)
	}
	if got := walk("labels.c==3"); !reflect.DeepEqual(got, []string{"base"}) {
		t.Fatalf("Walk(labels.c==3) = %v", got)
	}
	if got := walk("parent==base"); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("Walk(parent==base) = %v", got)
	}
}

func TestActiveMounts(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{WritableSize: 1 << 30})
	ids := chain(t, ctx, sn, nil, 3)
	layer := func(i int) mount.Mount {
		return mount.Mount{Type: "ext4", Source: filepath.Join(sn.dir(ids[i]), LayerImage), Options: []string{"ro", "loop"}}
	}
	overlay := func(lowerdir string) mount.Mount {
		return mount.Mount{Type: "format/mkdir/overlay", Source: "overlay", Options: []string{
			"X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
			"X-containerd.mkdir.path={{ mount 0 }}/work:0755",
			"workdir={{ mount 0 }}/work",
			"upperdir={{ mount 0 }}/upper",
			lowerdir,
		}}
	}
	for _, tc := range []struct {
		key, parent string
		rest        func() []mount.Mount
	}{
		{"c0", "", func() []mount.Mount {
			return []mount.Mount{{Type: "format/mkdir/bind", Source: "{{ mount 0 }}/upper",
				Options: []string{"X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "rw", "rbind"}}}
		}},
		{"c1", "l1", func() []mount.Mount { return []mount.Mount{layer(0), overlay("lowerdir={{ mount 1 }}")} }},
		{"c3", "l3", func() []mount.Mount {
			return []mount.Mount{layer(2), layer(1), layer(0), overlay("lowerdir={{ overlay 1 3 }}")}
		}},
	} {
		got, err := sn.Prepare(ctx, tc.key, tc.parent)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Type != "ext4" || !reflect.DeepEqual(got[0].Options, []string{"rw", "loop"}) || filepath.Base(got[0].Source) != WritableImage {
			t.Fatalf("%s: mount 0 = %+v", tc.key, got[0])
		}
		fi, err := os.Stat(got[0].Source)
		if err != nil || fi.Size() != 1<<30 {
			t.Fatalf("%s: writable image: %v %v", tc.key, fi, err)
		}
		if want := tc.rest(); !reflect.DeepEqual(got[1:], want) {
			t.Fatalf("%s: mounts\n got %+v\nwant %+v", tc.key, got[1:], want)
		}
		again, err := sn.Mounts(ctx, tc.key)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("%s: Mounts = %+v, %v; Prepare gave %+v", tc.key, again, err, got)
		}
		// The unpacker skips Apply if the last mount is read-only.
		if got[len(got)-1].ReadOnly() {
			t.Fatalf("%s: last mount is read-only", tc.key)
		}
	}
}

func TestWritableSizeLabel(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	ms, err := sn.Prepare(ctx, "c", "", snapshots.WithLabels(map[string]string{LabelWritableSize: "64MiB"}))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(ms[0].Source); err != nil || fi.Size() != 64<<20 {
		t.Fatalf("writable image: %v %v", fi, err)
	}
	if _, err := sn.Prepare(ctx, "bad", "", snapshots.WithLabels(map[string]string{LabelWritableSize: "lots"})); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad size label: %v", err)
	}
	if entries, _ := os.ReadDir(SnapshotsDir(sn.root)); len(entries) != 1 {
		t.Fatalf("failed Prepare left a directory: %v", entries)
	}
	u, err := sn.Usage(ctx, "c")
	if err != nil || u.Inodes != 1 || u.Size > 1<<20 {
		t.Fatalf("Usage of a fresh sparse image = %+v, %v", u, err)
	}
}

func TestViewMounts(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	ids := chain(t, ctx, sn, nil, 3)
	layer := func(i int) mount.Mount {
		return mount.Mount{Type: "ext4", Source: filepath.Join(sn.dir(ids[i]), LayerImage), Options: []string{"ro", "loop"}}
	}

	got, err := sn.View(ctx, "v1", "l1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []mount.Mount{layer(0)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("view of one layer:\n got %+v\nwant %+v", got, want)
	}
	got, err = sn.View(ctx, "v3", "l3")
	if err != nil {
		t.Fatal(err)
	}
	want := []mount.Mount{layer(2), layer(1), layer(0),
		{Type: "format/overlay", Source: "overlay", Options: []string{"ro", "lowerdir={{ overlay 0 2 }}"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("view of three layers:\n got %+v\nwant %+v", got, want)
	}
	got, err = sn.View(ctx, "v0", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Type != "ext4" || !reflect.DeepEqual(got[0].Options, []string{"ro", "loop"}) {
		t.Fatalf("empty view: %+v", got)
	}
	if _, err := os.Stat(got[0].Source); err != nil {
		t.Fatal(err)
	}
	if info, err := sn.Stat(ctx, "v3"); err != nil || info.Kind != snapshots.KindView {
		t.Fatalf("Stat(v3) = %+v, %v", info, err)
	}
}

func TestCleanup(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{})
	id := commitLayer(t, ctx, sn, nil, "base", "")
	orphans := []string{
		filepath.Join(SnapshotsDir(sn.root), "999"),
		filepath.Join(sn.root, mergedDir, "999.ext4"),
		filepath.Join(sn.root, mergedDir, "5.ext4"+tmpSuffix),
	}
	if err := os.MkdirAll(orphans[0], 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range orphans[1:] {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kept := sn.mergedPath(id)
	if err := os.WriteFile(kept, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range orphans {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived Cleanup: %v", p, err)
		}
	}
	for _, p := range []string{sn.dir(id), kept} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Cleanup removed %s: %v", p, err)
		}
	}
}

func TestIsUnpack(t *testing.T) {
	for key, want := range map[string]bool{
		"extract-123-abc sha256:1":     true,
		"default/7/extract-1 sha256:1": true,
		"default/7/container":          false,
		"extraction":                   false,
	} {
		if got := isUnpack(key, snapshots.Info{}); got != want {
			t.Errorf("isUnpack(%q) = %v", key, got)
		}
	}
	if !isUnpack("x", snapshots.Info{Labels: map[string]string{snapshots.LabelSnapshotRef: "c"}}) {
		t.Error("label not recognised")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "10GiB": 10 << 30, "10G": 10 << 30, "512m": 512 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := ParseSize("ten"); err == nil {
		t.Error("ParseSize(ten) succeeded")
	}
}

// TestRealWritable prepares a container snapshot with ext4.CreateWritable.
func TestRealWritable(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{WritableSize: 256 << 20})
	sn.createWritable = ext4.CreateWritable
	ms, err := sn.Prepare(ctx, "c", "")
	if errdefs.IsNotImplemented(err) {
		t.Skipf("ext4.CreateWritable not implemented yet: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(ms[0].Source)
	if err != nil || fi.Size() != 256<<20 {
		t.Fatalf("writable image: %v %v", fi, err)
	}
	if u, err := sn.Usage(ctx, "c"); err != nil || u.Size >= 256<<20 {
		t.Fatalf("Usage of a sparse writable image = %+v, %v", u, err)
	}
	if _, err := os.Stat(ms[0].Source + tmpSuffix); !os.IsNotExist(err) {
		t.Fatalf("temp image left: %v", err)
	}
}

func TestReopen(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	sn, err := New(root, Config{})
	if err != nil {
		t.Fatal(err)
	}
	sn.createWritable = fakeWritable
	id := commitLayer(t, ctx, sn, nil, "base", "")
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	// Temporary files of a run that stopped mid-write.
	temps := []string{
		filepath.Join(SnapshotsDir(root), id, LayerImage+tmpSuffix),
		filepath.Join(root, mergedDir, id+".ext4"+tmpSuffix),
	}
	for _, p := range temps {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sn, err = New(root, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	for _, p := range temps {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived a restart: %v", p, err)
		}
	}
	if info, err := sn.Stat(ctx, "base"); err != nil || info.Kind != snapshots.KindCommitted {
		t.Fatalf("after reopen: %+v, %v", info, err)
	}
}

// TestRebaseOnCommit: containerd's parallel unpack (the rebase capability)
// prepares a layer without its parent and names the parent at Commit. A
// layer image does not depend on its parent, so the chain is the same as
// one unpacked in order.
func TestRebaseOnCommit(t *testing.T) {
	ctx := testContext(t)
	sn := newTestSnapshotter(t, Config{WritableSize: 1 << 30})
	l1 := commitLayer(t, ctx, sn, nil, "l1", "")

	key := "extract-2 l2"
	mounts, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "l2"}))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := SnapshotDirFromMounts(sn.root, mounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, LayerImage), []byte("image of l2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "l2", key, snapshots.WithParent("l1")); err != nil {
		t.Fatal(err)
	}
	info, err := sn.Stat(ctx, "l2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Parent != "l1" {
		t.Fatalf("l2's parent %q, want l1", info.Parent)
	}
	ms, err := sn.Prepare(ctx, "c", "l2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(sn.dir(filepath.Base(dir)), LayerImage), filepath.Join(sn.dir(l1), LayerImage)}
	if len(ms) != 4 || ms[1].Source != want[0] || ms[2].Source != want[1] || ms[3].Type != "format/mkdir/overlay" {
		t.Errorf("mounts of a container on the rebased chain: %+v, want layers %q", ms, want)
	}
}
