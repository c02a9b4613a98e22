package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
)

func TestTransformMountTemplates(t *testing.T) {
	active := []activeMount{
		{Mount: mount.Mount{Type: "ext4", Source: "/dev/vda", Target: "t0"}, mountPoint: "/m/0"},
		{Mount: mount.Mount{Type: "ext4", Source: "/dev/vdb"}, mountPoint: "/m/1"},
		{Mount: mount.Mount{Type: "ext4", Source: "/dev/vdc"}, mountPoint: "/m/2"},
	}
	m, err := transformMount(mount.Mount{
		Type:   "format/overlay",
		Source: "{{ source 1 }}",
		Target: "{{ target 0 }}",
		Options: []string{
			"lowerdir={{ overlay 1 2 }}",
			"upperdir={{ mount 0 }}/upper",
			"x={{ overlay 2 1 }}",
			"ro",
		},
	}, active)
	if err != nil {
		t.Fatal(err)
	}
	want := mount.Mount{Type: "overlay", Source: "/dev/vdb", Target: "t0",
		Options: []string{"lowerdir=/m/1:/m/2", "upperdir=/m/0/upper", "x=/m/2:/m/1", "ro"}}
	if m.Type != want.Type || m.Source != want.Source || m.Target != want.Target || strings.Join(m.Options, ",") != strings.Join(want.Options, ",") {
		t.Fatalf("got %+v, want %+v", m, want)
	}

	for _, bad := range []struct {
		m    mount.Mount
		want error
	}{
		{mount.Mount{Type: "format/bind", Source: "{{ mount 3 }}"}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "format/bind", Source: "{{ overlay 0 5 }}"}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "format/bind", Source: "{{ mount -1 }}"}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "format/bind", Source: "{{ nosuch 0 }}"}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "mkfs/ext4", Source: "/x"}, errdefs.ErrNotImplemented},
		{mount.Mount{Type: "mkdir/bind", Options: []string{"X-containerd.mkdir.path=/etc/evil:0755"}}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "mkdir/bind", Options: []string{"X-containerd.mkdir.path={{ mount 0 }}/x"}}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "mkdir/bind", Options: []string{"X-containerd.mkdir.path=/m/0/x:0999"}}, errdefs.ErrInvalidArgument},
		{mount.Mount{Type: "mkdir/bind", Options: []string{"X-containerd.mkdir.path=/m/0/../../etc:0755"}}, errdefs.ErrInvalidArgument},
	} {
		if _, err := transformMount(bad.m, active); !errors.Is(err, bad.want) {
			t.Errorf("%+v: got %v, want %v", bad.m, err, bad.want)
		}
	}
}

// TestMountChain mounts a chain like our snapshotter's (writable layer,
// read-only layer, overlay of them) with bind mounts standing in for the
// disks, and checks the merged view, where writes land, and that nothing
// stays mounted afterwards.
func TestMountChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: TestMountChain needs root (bind and overlay mounts)")
	}
	dir := t.TempDir()
	rw, lower, root, scratch := filepath.Join(dir, "rw"), filepath.Join(dir, "lower"), filepath.Join(dir, "root"), filepath.Join(dir, "chain")
	for _, d := range []string{rw, lower, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "hello"), []byte("from the layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	chain := []mount.Mount{
		{Type: "bind", Source: rw, Options: []string{"rbind", "rw"}},
		{Type: "bind", Source: lower, Options: []string{"rbind", "ro"}},
		{Type: "format/mkdir/overlay", Source: "overlay", Options: []string{
			"X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
			"X-containerd.mkdir.path={{ mount 0 }}/work:0755",
			"workdir={{ mount 0 }}/work",
			"upperdir={{ mount 0 }}/upper",
			"lowerdir={{ mount 1 }}",
		}},
	}
	mps, err := mountChain(chain, root, scratch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(scratch, "0"), filepath.Join(scratch, "1"), root}; strings.Join(mps, " ") != strings.Join(want, " ") {
		t.Fatalf("mountpoints %v, want %v", mps, want)
	}
	if b, err := os.ReadFile(filepath.Join(root, "hello")); err != nil || string(b) != "from the layer" {
		t.Errorf("merged view: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(root, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unmountChain(mps); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rw, "upper", "new")); err != nil {
		t.Errorf("the write did not land in the writable layer's upper: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(rw, "upper")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("upper: %v, %v", fi, err)
	}
	assertNotMounted(t, dir)

	// A chain that fails half-way leaves nothing mounted.
	bad := append(chain[:2:2], mount.Mount{Type: "format/overlay", Source: "overlay", Options: []string{"lowerdir={{ mount 7 }}"}})
	if _, err := mountChain(bad, root, scratch); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad chain: %v", err)
	}
	assertNotMounted(t, dir)
}

func assertNotMounted(t *testing.T, dir string) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		t.Errorf("still mounted: %s", m.Mountpoint)
	}
}
