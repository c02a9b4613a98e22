package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

// erofsLayerMediaType is a native EROFS layer (containerd's erofs differ copies it as it is).
const erofsLayerMediaType = "application/vnd.erofs.layer.v1"

// TestErofsSnapshotter: a container whose rootfs comes from containerd's own erofs snapshotter in
// block mode, the shape nerdbox uses: an ext4 writable image made by containerd's mount manager
// (mkfs/ext4), the image's EROFS layer, and a format/mkdir/overlay mount that stacks them. The
// shim makes disks of both, the guest mounts erofs and ext4 and stacks them with overlayfs.
//
// The layer is an EROFS image made with mkfs.erofs from a directory, which the snapshotter takes
// from its layer content cache: Debian 12's erofs-utils (1.5) cannot convert a tar (--tar=f), and
// without that containerd's erofs differ does not load.
func TestErofsSnapshotter(t *testing.T) {
	rt := runtimeCase{name: "vz", runtime: vzRuntime, vm: true}
	if reason := rt.skipReason(); reason != "" {
		t.Skip(skipPrefix + reason)
	}
	if !hostHasErofs() {
		missingPrereq(t, "the host kernel has no erofs (containerd's erofs snapshotter needs it)")
	}
	mkfs, err := exec.LookPath("mkfs.erofs")
	if err != nil {
		missingPrereq(t, "no mkfs.erofs (make deps installs erofs-utils)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(suite.bin.busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "grep", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "erofs-test"), []byte("from an erofs layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(dir, "layer.erofs")
	if out, err := exec.Command(mkfs, "-T0", layer, root).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v: %s", err, out)
	}
	data, err := os.ReadFile(layer)
	if err != nil {
		t.Fatal(err)
	}
	dg := digest.FromBytes(data)
	// The snapshotter takes the layer from its content cache, keyed by diffID; the unpacker then
	// applies nothing.
	cached := filepath.Join(suite.d.erofsCache(), dg.Algorithm().String(), dg.Encoded()[:2], dg.Encoded()+".erofs")
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cached, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cached) })
	img, err := testimage.NewImage([]testimage.Blob{{MediaType: erofsLayerMediaType, Data: data, Digest: dg, DiffID: dg}}, "mkfs.erofs")
	if err != nil {
		t.Fatal(err)
	}
	reg := startRegistry(t)
	ref := reg.push(t, "erofs", "v1", img)

	h := newHarness(t, rt)
	h.ctrOK("image", "pull", "--plain-http", "--snapshotter", "erofs", "--platform", "linux/"+runtime.GOARCH, ref)
	t.Cleanup(func() { h.ctr("image", "rm", "--sync", ref) })
	// With our kernel (erofs built in) and Debian's (the erofs module in its initrd).
	for _, k := range []struct{ name, config string }{{"ours", h.d.vzConfig}, {"debian", debianRuntimeConfig(t, h.d.bin)}} {
		id := h.newID("erofs-" + k.name)
		args := []string{"run", "--runtime", vzRuntime, "--runtime-config-path", k.config, "--snapshotter", "erofs"}
		args = append(args, h.rmFlags()...)
		args = append(args, ref, id, "sh", "-c", "cat /etc/erofs-test; grep -E ' / ' /proc/mounts; echo written >/tmp/x && cat /tmp/x")
		out := h.ctrOK(args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || lines[0] != "from an erofs layer" || !strings.HasPrefix(lines[1], "overlay / overlay") || lines[2] != "written" {
			t.Fatalf("%s kernel: the container printed %q; want the layer's file, an overlay root and what it wrote", k.name, out)
		}
		t.Logf("%s kernel: %q", k.name, out)
	}
	// No writable snapshot is left of the container.
	if snaps := h.ctrOK("snapshots", "--snapshotter", "erofs", "ls"); strings.Contains(snaps, "Active") {
		t.Errorf("an active erofs snapshot is left after ctr run --rm:\n%s", snaps)
	}
}
