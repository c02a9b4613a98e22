package shim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRootfsDisks(t *testing.T) {
	img := filepath.Join(t.TempDir(), "scratch.ext4")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	disks, guest, err := rootfsDisks([]*types.Mount{{Type: "ext4", Source: img, Options: []string{"loop", "ro"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 1 || disks[0].Path != img || !disks[0].ReadOnly || disks[0].ID != "rootfs0" {
		t.Errorf("disks %+v", disks)
	}
	if guest[0].Source != "disk:rootfs0" || len(guest[0].Options) != 1 || guest[0].Options[0] != "ro" {
		t.Errorf("guest mounts %+v", guest)
	}

	for name, m := range map[string][]*types.Mount{
		"none":    nil,
		"overlay": {{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a"}}},
		"bind":    {{Type: "bind", Source: "/tmp", Options: []string{"rbind"}}},
	} {
		if _, _, err := rootfsDisks(m); !errdefs.IsNotImplemented(err) {
			t.Errorf("%s: %v, want not implemented", name, err)
		}
	}
	if _, _, err := rootfsDisks([]*types.Mount{{Type: "ext4", Source: "/nonexistent.img"}}); err == nil {
		t.Errorf("a missing image was accepted")
	}
}

func TestGuestSpec(t *testing.T) {
	write := func(s *specs.Spec) string {
		dir := t.TempDir()
		b, _ := json.Marshal(s)
		os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
		return dir
	}
	s := &specs.Spec{Root: &specs.Root{Path: "/run/containerd/x/rootfs"}, Process: &specs.Process{Args: []string{"true"}},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}}}
	_, b, _, _, err := guestSpec(write(s), "9p")
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	json.Unmarshal(b, &got)
	if got.Root.Path != "rootfs" || len(got.Mounts) != 1 {
		t.Errorf("guest spec root %q mounts %v", got.Root.Path, got.Mounts)
	}

	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: t.TempDir(), Options: []string{"rbind"}})
	_, b, shares, agentShares, err := guestSpec(write(s), "9p")
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &got)
	if len(shares) != 1 || len(agentShares) != 1 || got.Mounts[1].Source != "/run/vz-agent/shares/s0" {
		t.Errorf("bind mount: shares %v %v, guest mounts %v", shares, agentShares, got.Mounts)
	}
	s.Mounts[1].Source = filepath.Join(t.TempDir(), "missing")
	if _, _, _, _, err := guestSpec(write(s), "9p"); !errdefs.IsNotFound(err) {
		t.Errorf("bind mount of a missing source: %v, want not found", err)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{"), 0o644)
	if _, _, _, _, err := guestSpec(dir, "9p"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("malformed: %v, want invalid argument", err)
	}
}
