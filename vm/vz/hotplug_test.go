package vz

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/api/diskstamp"
	"github.com/vz-shim/containerd-shim-vz/snapshotter/ext4"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// fakeUSB is the VM's USB controller: it records what is attached.
type fakeUSB struct {
	mu        sync.Mutex
	attached  map[string]DiskPlan // by path
	attachErr error
	detachErr error
}

func (u *fakeUSB) Attach(d DiskPlan) (func() error, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.attachErr != nil {
		return nil, u.attachErr
	}
	if u.attached == nil {
		u.attached = map[string]DiskPlan{}
	}
	u.attached[d.Path] = d
	return func() error {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.detachErr != nil {
			return u.detachErr
		}
		delete(u.attached, d.Path)
		return nil
	}, nil
}

func (u *fakeUSB) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.attached)
}

// mkfs makes a real ext4 image; the tests stamp it and e2fsck checks it after.
func mkfs(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command(e2fsTool(t, "mkfs.ext4"), "-q", "-F", path, "8M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

func fsck(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command(e2fsTool(t, "e2fsck"), "-fn", path).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", path, err, out)
	}
}

// e2fsTool: the plan's tests check real ext4 images, so CI must have e2fsprogs.
func e2fsTool(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isFile(p) {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required (apt-get install e2fsprogs)", name)
		}
		t.Skipf("SKIP: %s not installed", name)
	}
	return p
}

func isFile(p string) bool { fi, err := os.Stat(p); return err == nil && fi.Mode().IsRegular() }

func head(t *testing.T, path string) []byte {
	t.Helper()
	b, err := diskstamp.Head(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hotMachine is a started machine with 2 disk slots over a fake USB bus.
func hotMachine(t *testing.T) (*Machine, *fakeUSB, string) {
	t.Helper()
	state := t.TempDir()
	m := started(t, newFakeVM())
	bus := &fakeUSB{}
	m.hot = newHotplug(HotPlan{Slots: 2, Dir: state}, bus)
	return m, bus, state
}

// TestPlanHot: with USB (macOS 15) a VM with disk slots gets a USB controller and the state
// dir for clones; without, it boots with none (AddDisk says why).
func TestPlanHot(t *testing.T) {
	cfg := fakeConfig(t)
	cfg.DiskSlots = 3
	cfg.DiskCaching = "uncached"
	usb := testHost
	usb.USB = true
	p, err := NewPlan(cfg, usb)
	if err != nil {
		t.Fatal(err)
	}
	want := HotPlan{Slots: 3, Dir: cfg.StateDir, Caching: "uncached"}
	if p.Hot != want {
		t.Errorf("hot plan %+v, want %+v", p.Hot, want)
	}
	if p, err := NewPlan(cfg, testHost); err != nil || p.Hot.Slots != 0 {
		t.Errorf("without USB: %+v %v, want no hot plan", p.Hot, err)
	}
	cfg.DiskSlots = 0
	if p, err := NewPlan(cfg, usb); err != nil || p.Hot.Slots != 0 {
		t.Errorf("no slots: %+v %v", p.Hot, err)
	}
	for name, mod := range map[string]func(*vm.Config){
		"negative slots": func(c *vm.Config) { c.DiskSlots = -1 },
		"no state dir":   func(c *vm.Config) { c.DiskSlots = 1; c.StateDir = "" },
		"bad sync mode":  func(c *vm.Config) { c.DiskSlots = 1; c.DiskSync = "sometimes" },
	} {
		c := fakeConfig(t)
		mod(&c)
		if _, err := NewPlan(c, usb); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

// TestAddDiskReadOnly: a read-only disk (a shared layer) is attached as a stamped clone; the
// layer itself is untouched, the clone is still a clean ext4, and it goes with RemoveDisk.
func TestAddDiskReadOnly(t *testing.T) {
	m, bus, state := hotMachine(t)
	layer := filepath.Join(t.TempDir(), "layer.ext4")
	mkfs(t, layer)
	before, _ := os.ReadFile(layer)

	if err := m.AddDisk(context.Background(), vm.Disk{ID: "c2-layer0", Path: layer, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(layer); !bytes.Equal(before, after) {
		t.Errorf("the shared layer was written to")
	}
	clones, _ := filepath.Glob(filepath.Join(state, "stamped-*.img"))
	if len(clones) != 1 || bus.count() != 1 {
		t.Fatalf("clones %v, attached %v", clones, bus.attached)
	}
	d := bus.attached[clones[0]]
	if !d.ReadOnly || d.ID != "c2-layer0" || d.Sync != SyncNone || d.Caching != CachingCached {
		t.Errorf("attached %+v", d)
	}
	if id, ok := diskstamp.Parse(head(t, clones[0])); !ok || id != "c2-layer0" {
		t.Errorf("clone stamp %q %v", id, ok)
	}
	fsck(t, clones[0])

	if err := m.RemoveDisk(context.Background(), "c2-layer0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(clones[0]); !errors.Is(err, os.ErrNotExist) || bus.count() != 0 {
		t.Errorf("after RemoveDisk: clone %v, attached %d", err, bus.count())
	}
	if err := m.RemoveDisk(context.Background(), "c2-layer0"); !errdefs.IsNotFound(err) {
		t.Errorf("second RemoveDisk: %v, want not found", err)
	}
}

// TestAddDiskWritable: a writable disk is the container's own: stamped in place, still a clean
// ext4; adding it again after a remove finds the old stamp and replaces it.
func TestAddDiskWritable(t *testing.T) {
	m, bus, state := hotMachine(t)
	rw := filepath.Join(t.TempDir(), "rw.ext4")
	mkfs(t, rw)
	ctx := context.Background()
	if err := m.AddDisk(ctx, vm.Disk{ID: "c2-rw", Path: rw}); err != nil {
		t.Fatal(err)
	}
	if d, ok := bus.attached[rw]; !ok || d.ReadOnly || d.Sync != SyncFsync {
		t.Errorf("attached %+v", bus.attached)
	}
	if clones, _ := filepath.Glob(filepath.Join(state, "*")); len(clones) != 0 {
		t.Errorf("a writable disk was cloned: %v", clones)
	}
	if id, ok := diskstamp.Parse(head(t, rw)); !ok || id != "c2-rw" {
		t.Errorf("stamp %q %v", id, ok)
	}
	fsck(t, rw)
	if err := m.RemoveDisk(ctx, "c2-rw"); err != nil {
		t.Fatal(err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "c3-rw", Path: rw}); err != nil {
		t.Fatalf("restamping: %v", err)
	}
	if id, _ := diskstamp.Parse(head(t, rw)); id != "c3-rw" {
		t.Errorf("restamped %q", id)
	}
}

// TestAddDiskRefused: what cannot be attached says why and leaves nothing behind.
func TestAddDiskRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img := func(name string, headByte byte) string {
		p := filepath.Join(dir, name)
		b := make([]byte, 64<<10)
		b[100] = headByte
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c := img("a", 0), img("b", 0), img("c", 0)
	foreign := img("foreign", 0xeb)

	// Not started: no VM to attach to.
	idle := newMachine(ctx, "idle", newFakeVM())
	idle.hot = newHotplug(HotPlan{Slots: 1, Dir: dir}, &fakeUSB{})
	if err := idle.AddDisk(ctx, vm.Disk{ID: "x", Path: a}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("before Start: %v, want failed precondition", err)
	}
	// No USB (before macOS 15) or no slots.
	plain := started(t, newFakeVM())
	if err := plain.AddDisk(ctx, vm.Disk{ID: "x", Path: a}); !errdefs.IsNotImplemented(err) {
		t.Errorf("without USB: %v, want not implemented", err)
	}

	m, bus, state := hotMachine(t)
	if err := m.AddDisk(ctx, vm.Disk{ID: "f", Path: foreign, ReadOnly: true}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a disk whose first KiB is in use: %v, want invalid argument", err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "bad id", Path: a}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad id: %v, want invalid argument", err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "gone", Path: filepath.Join(dir, "gone")}); err == nil {
		t.Errorf("a missing image was attached")
	}
	bus.attachErr = errors.New("VZErrorDomain: attach failed")
	if err := m.AddDisk(ctx, vm.Disk{ID: "a", Path: a, ReadOnly: true}); err == nil {
		t.Errorf("attach error lost")
	}
	bus.attachErr = nil
	if left, _ := filepath.Glob(filepath.Join(state, "*")); len(left) != 0 {
		t.Errorf("refused disks left %v", left)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "a", Path: a, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "a", Path: b}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("same id twice: %v, want already exists", err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "b", Path: b}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "c", Path: c}); !errdefs.IsResourceExhausted(err) {
		t.Errorf("past the slots: %v, want resource exhausted", err)
	}
	// A detach that fails keeps the disk (and its clone) to try again.
	bus.detachErr = errors.New("busy")
	if err := m.RemoveDisk(ctx, "a"); err == nil {
		t.Errorf("detach error lost")
	}
	bus.detachErr = nil
	if left, _ := filepath.Glob(filepath.Join(state, "*")); len(left) != 1 {
		t.Errorf("after a failed detach: %v, want the clone kept", left)
	}
	// The VM stops: its clones go, and a later RemoveDisk has nothing to detach.
	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
	if left, _ := filepath.Glob(filepath.Join(state, "*")); len(left) != 0 {
		t.Errorf("after Stop: %v left", left)
	}
}

// TestStampSnapshotterImages: the images the vz snapshotter makes (a layer's, a writable one)
// leave their first KiB free, take a stamp, and stay clean ext4 for e2fsck.
func TestStampSnapshotterImages(t *testing.T) {
	dir := t.TempDir()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	body := []byte("hello\n")
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/hello", Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	ro := filepath.Join(dir, "layer.ext4")
	if _, err := ext4.ConvertLayer(context.Background(), &layer, ro, ext4.Limits{}); err != nil {
		t.Fatal(err)
	}
	rw := filepath.Join(dir, "rw.ext4")
	if err := ext4.CreateWritable(rw, 64<<20); err != nil {
		t.Fatal(err)
	}
	m, _, state := hotMachine(t)
	ctx := context.Background()
	if err := m.AddDisk(ctx, vm.Disk{ID: "l0", Path: ro, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddDisk(ctx, vm.Disk{ID: "rw", Path: rw}); err != nil {
		t.Fatal(err)
	}
	clones, _ := filepath.Glob(filepath.Join(state, "stamped-*.img"))
	if len(clones) != 1 {
		t.Fatalf("clones %v", clones)
	}
	for _, p := range []string{clones[0], rw} {
		if _, ok := diskstamp.Parse(head(t, p)); !ok {
			t.Errorf("%s: no stamp", p)
		}
		fsck(t, p)
	}
}
