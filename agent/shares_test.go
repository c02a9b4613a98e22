package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

func TestShareMountFor(t *testing.T) {
	for _, tc := range []struct {
		share *agentapi.Share
		want  shareMount
	}{
		{&agentapi.Share{Tag: "s0", Fstype: "9p"}, shareMount{source: "s0", target: "/shares/s0", fstype: "9p",
			data: "trans=virtio,version=9p2000.L,msize=262144,cache=none"}},
		{&agentapi.Share{Tag: "s1", Fstype: "9p", Readonly: true}, shareMount{source: "s1", target: "/shares/s1", fstype: "9p",
			flags: unix.MS_RDONLY, data: "trans=virtio,version=9p2000.L,msize=262144,cache=none"}},
		{&agentapi.Share{Tag: "s2", Fstype: "virtiofs", Readonly: true}, shareMount{source: "s2", target: "/shares/s2", fstype: "virtiofs",
			flags: unix.MS_RDONLY}},
		// A directory of a device holding several shares (VZ) is a bind.
		{&agentapi.Share{Tag: "s3", Fstype: "virtiofs", Readonly: true, Device: "vz-shares"}, shareMount{source: "/sharedevs/vz-shares/s3",
			target: "/shares/s3", flags: unix.MS_BIND | unix.MS_RDONLY}},
	} {
		got, err := shareMountFor("/shares", tc.share)
		if err != nil {
			t.Errorf("%v: %v", tc.share, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%v: %+v, want %+v", tc.share, got, tc.want)
		}
	}
	for _, s := range []*agentapi.Share{
		{Tag: "", Fstype: "9p"},
		{Tag: "..", Fstype: "9p"},
		{Tag: "a/b", Fstype: "9p"},
		{Tag: "a,b", Fstype: "9p"},
		{Tag: "s0", Fstype: "nfs"},
		{Tag: "s0"},
		{Tag: "s0", Fstype: "virtiofs", Device: "../x"},
		{Tag: "s0", Fstype: "nfs", Device: "d"},
	} {
		if _, err := shareMountFor("/shares", s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want invalid argument", s, err)
		}
	}
}

// TestMountSharesChecksFirst: a bad share anywhere in the request fails it
// before anything is created or mounted.
func TestMountSharesChecksFirst(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shares")
	for _, shares := range [][]*agentapi.Share{
		{{Tag: "s0", Fstype: "9p"}, {Tag: "s1", Fstype: "ext4"}},
		{{Tag: "s0", Fstype: "9p"}, {Tag: "s0", Fstype: "9p"}},
	} {
		if err := mountShares(dir, shares); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want invalid argument", shares, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s was created: %v", dir, err)
	}
	if err := mountShares(dir, nil); err != nil {
		t.Errorf("no shares: %v", err)
	}
}

// TestShareBind: the bind of a share's directory in a device of several
// shares, read-only when asked (which takes a remount).
func TestShareBind(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: TestShareBind needs root (bind mounts)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "dev", "s0")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		target := filepath.Join(dir, "shares", "s0")
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		m := shareMount{source: src, target: target, flags: unix.MS_BIND}
		if ro {
			m.flags |= unix.MS_RDONLY
		}
		if err := m.mount(); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "x" {
			t.Errorf("ro=%v: read %q, %v", ro, b, err)
		}
		err := os.WriteFile(filepath.Join(target, "g"), nil, 0o644)
		if ro != (err != nil) {
			t.Errorf("ro=%v: write: %v", ro, err)
		}
		if err := unix.Unmount(target, 0); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(src, "g"))
	}
}
