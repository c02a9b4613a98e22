package integration

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/api/diskstamp"
	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// TestGroupUSBDisks runs the guest's half of how VZ adds a joining container's disks to a
// running VM (vm/vz/hotplug.go), under QEMU: with disk_hotplug = "usb" the second container of a
// group brings its vz snapshotter disks (two read-only layers, one writable) as USB mass storage
// stamped with their ids; the guest loads the USB drivers, the agent finds each disk by its stamp
// and the container runs on them. The layer images the snapshotter keeps are never written (the
// stamps go on clones), the clones go with the container, and the harness checks for leaks.
func TestGroupUSBDisks(t *testing.T) {
	h := newSnapHarness(t, true)
	bb, err := testimage.BusyboxLayer(h.d.bin.busybox)
	if err != nil {
		t.Fatal(err)
	}
	note := []byte("from-the-second-layer\n")
	img, err := testimage.BuildImage([]testimage.Layer{bb, {Entries: []testimage.Entry{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "etc/note", Mode: 0o644}, Data: note},
	}}}, "usb disks")
	if err != nil {
		t.Fatal(err)
	}
	ref := h.reg.push(t, "usbdisks", "1", img)
	if r := h.pull(vzSnapshotter, ref); r.code != 0 {
		t.Fatalf("pull into vz: %s", r)
	}
	defer h.removeImage(ref)

	base, err := os.ReadFile(h.d.vzConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(h.d.dir, "vz-usb.toml")
	if err := os.WriteFile(cfg, append(base, "disk_hotplug = \"usb\"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	group := "--annotation=" + groupAnnotation + "=usb-" + strconv.Itoa(idCounter)
	run := func(id string, cmd ...string) {
		t.Helper()
		args := append([]string{"run", "-d", "--null-io", group, "--snapshotter", vzSnapshotter, "--runtime", vzRuntime, "--runtime-config-path", cfg, ref, id}, cmd...)
		h.ctrOK(args...)
	}
	a, b := h.newID("usb-a"), h.newID("usb-b")
	run(a, "sleep", "600")
	run(b, "sleep", "600")

	// b's disks are SCSI disks of the guest (USB mass storage), a's virtio-blk ones.
	if got := h.execOK(b, "note", "cat", "/etc/note"); got != string(note) {
		t.Errorf("b reading its second layer: %q", got)
	}
	if got := h.execOK(b, "blocks", "ls", "/sys/block"); !strings.Contains(got, "sda") || !strings.Contains(got, "vda") {
		t.Errorf("the guest's disks: %q, want vd* (a's) and sd* (b's, USB)", got)
	}
	h.execOK(b, "write", "sh", "-c", "echo written-on-usb > /out && sync")
	if got := h.execOK(b, "read", "cat", "/out"); got != "written-on-usb\n" {
		t.Errorf("b reading what it wrote: %q", got)
	}
	stateDir := filepath.Join(h.d.state, "io.containerd.runtime.v2.task", h.d.namespace, a, "vm")
	if clones, _ := filepath.Glob(filepath.Join(stateDir, vm.StampedClones)); len(clones) != 2 {
		t.Errorf("stamped clones of b's read-only layers in %s: %q, want 2", stateDir, clones)
	}
	h.killAndRemove(b)
	if clones, _ := filepath.Glob(filepath.Join(stateDir, vm.StampedClones)); len(clones) != 0 {
		t.Errorf("clones left after b was deleted: %q", clones)
	}
	// The snapshotter's layer images were never stamped (b's writable image was, in place: it
	// is b's own and goes with it).
	layers := 0
	filepath.Walk(h.s.root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() || !strings.HasSuffix(p, ".ext4") || filepath.Base(p) == "rw.ext4" {
			return nil
		}
		if head, err := diskstamp.Head(p); err == nil {
			layers++
			if id, ok := diskstamp.Parse(head); ok {
				t.Errorf("%s carries the stamp %q", p, id)
			}
		}
		return nil
	})
	if layers == 0 {
		t.Errorf("no ext4 images under %s", h.s.root)
	}
	h.killAndRemove(a)
}
