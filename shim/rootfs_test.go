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

func TestPlanRootfsBlock(t *testing.T) {
	img := filepath.Join(t.TempDir(), "scratch.ext4")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	p, err := planRootfs(t.TempDir(), []*types.Mount{{Type: "ext4", Source: img, Options: []string{"loop", "ro"}}}, "9p", "rootfs")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.disks) != 1 || p.disks[0].Path != img || !p.disks[0].ReadOnly || p.disks[0].ID != "rootfs0" || p.share != nil || p.hostMounted != "" {
		t.Errorf("plan %+v", p)
	}
	if p.guest[0].Source != "disk:rootfs0" || len(p.guest[0].Options) != 1 || p.guest[0].Options[0] != "ro" {
		t.Errorf("guest mounts %+v", p.guest)
	}
	if _, err := planRootfs(t.TempDir(), []*types.Mount{{Type: "ext4", Source: "/nonexistent.img"}}, "9p", "rootfs"); err == nil {
		t.Errorf("a missing image was accepted")
	}
	mixed := []*types.Mount{{Type: "ext4", Source: img}, {Type: "bind", Source: "/tmp", Options: []string{"rbind"}}}
	if _, err := planRootfs(t.TempDir(), mixed, "9p", "rootfs"); !errdefs.IsNotImplemented(err) {
		t.Errorf("mixed: %v, want not implemented", err)
	}
}

// TestPlanRootfsChain: our snapshotter's mounts (writable image, layer
// image, an overlay over them by index) become two disks, and the overlay
// reaches the guest unchanged, in place.
func TestPlanRootfsChain(t *testing.T) {
	dir := t.TempDir()
	rw, layer := filepath.Join(dir, "rw.ext4"), filepath.Join(dir, "layer.ext4")
	for _, f := range []string{rw, layer} {
		if err := os.WriteFile(f, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	overlay := &types.Mount{Type: "format/mkdir/overlay", Source: "overlay", Options: []string{"upperdir={{ mount 0 }}/upper", "lowerdir={{ mount 1 }}"}}
	p, err := planRootfs(t.TempDir(), []*types.Mount{
		{Type: "ext4", Source: rw, Options: []string{"rw", "loop"}},
		{Type: "ext4", Source: layer, Options: []string{"ro", "loop"}},
		overlay,
	}, "9p", "rootfs")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.disks) != 2 || p.disks[0].Path != rw || p.disks[0].ReadOnly || p.disks[1].Path != layer || !p.disks[1].ReadOnly {
		t.Errorf("disks %+v", p.disks)
	}
	if len(p.guest) != 3 || p.guest[0].Source != "disk:rootfs0" || p.guest[1].Source != "disk:rootfs1" || p.guest[2] != overlay {
		t.Errorf("guest mounts %+v", p.guest)
	}
	if _, err := planRootfs(t.TempDir(), []*types.Mount{overlay}, "9p", "rootfs"); !errdefs.IsNotImplemented(err) {
		t.Errorf("a chain without images: %v, want not implemented", err)
	}
}

func TestPlanRootfsDirectory(t *testing.T) {
	// No mounts: the bundle's own rootfs directory is shared, if it exists.
	bundle := t.TempDir()
	if _, err := planRootfs(bundle, nil, "9p", "rootfs"); !errdefs.IsNotFound(err) {
		t.Errorf("no mounts, no rootfs dir: %v, want not found", err)
	}
	os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755)
	p, err := planRootfs(bundle, nil, "9p", "rootfs")
	if err != nil {
		t.Fatal(err)
	}
	if p.share == nil || p.share.Tag != "rootfs" || p.share.Path != filepath.Join(bundle, "rootfs") || p.agentShare.Fstype != "9p" || p.hostMounted != "" ||
		p.guest[0].Type != "bind" || p.guest[0].Source != "/run/vz-agent/shares/rootfs" {
		t.Errorf("plan %+v, guest %+v", p, p.guest)
	}

	// A directory snapshot (native gives a bind) is mounted on the host and
	// shared.
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING the host mount half: needs root")
	}
	snap := t.TempDir()
	os.WriteFile(filepath.Join(snap, "marker"), []byte("snapshot"), 0o644)
	bundle = t.TempDir()
	p, err = planRootfs(bundle, []*types.Mount{{Type: "bind", Source: snap, Options: []string{"rbind", "rw"}}}, "9p", "rootfs")
	if err != nil {
		t.Fatal(err)
	}
	defer unmountHostRootfs(p.hostMounted)
	if b, err := os.ReadFile(filepath.Join(bundle, "rootfs", "marker")); err != nil || string(b) != "snapshot" {
		t.Errorf("the snapshot is not mounted at the bundle's rootfs: %q %v", b, err)
	}
	if err := unmountHostRootfs(p.hostMounted); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bundle, "rootfs", "marker")); err == nil {
		t.Errorf("still mounted after unmountHostRootfs")
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
	g, _, _, _, err := guestSpec(write(s), "9p", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := *g
	if got.Root.Path != "rootfs" || len(got.Mounts) != 1 {
		t.Errorf("guest spec root %q mounts %v", got.Root.Path, got.Mounts)
	}

	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: t.TempDir(), Options: []string{"rbind"}})
	g, _, shares, agentShares, err := guestSpec(write(s), "9p", nil)
	if err != nil {
		t.Fatal(err)
	}
	got = *g
	if len(shares) != 1 || len(agentShares) != 1 || got.Mounts[1].Source != "/run/vz-agent/shares/s0" {
		t.Errorf("bind mount: shares %v %v, guest mounts %v", shares, agentShares, got.Mounts)
	}
	s.Mounts[1].Source = filepath.Join(t.TempDir(), "missing")
	if _, _, _, _, err := guestSpec(write(s), "9p", nil); !errdefs.IsNotFound(err) {
		t.Errorf("bind mount of a missing source: %v, want not found", err)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{"), 0o644)
	if _, _, _, _, err := guestSpec(dir, "9p", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("malformed: %v, want invalid argument", err)
	}
}

func TestGuestSpecHostParts(t *testing.T) {
	dir := t.TempDir()
	s := &specs.Spec{
		Version: "1.2.0",
		Root:    &specs.Root{Path: "rootfs"},
		Hooks: &specs.Hooks{
			CreateRuntime:   []specs.Hook{{Path: "/bin/cr"}},
			CreateContainer: []specs.Hook{{Path: "/bin/cc"}},
			StartContainer:  []specs.Hook{{Path: "/bin/sc"}},
			Poststart:       []specs.Hook{{Path: "/bin/ps"}},
			Poststop:        []specs.Hook{{Path: "/bin/pt"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}},
			Sysctl:     map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.msgmax": "8192"},
		},
	}
	b, _ := json.Marshal(s)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	g, hs, _, _, err := guestSpec(dir, "9p", nil)
	if err != nil {
		t.Fatal(err)
	}
	if hs.netnsPath != "/var/run/netns/x" || hs.netnsNew {
		t.Errorf("netns %q new %v", hs.netnsPath, hs.netnsNew)
	}
	if len(hs.hooks.createRuntime) != 1 || len(hs.hooks.poststart) != 1 || len(hs.hooks.poststop) != 1 || !hs.hooks.setsUpNetwork() {
		t.Errorf("host hooks %+v", hs.hooks)
	}
	if len(g.Hooks.CreateRuntime)+len(g.Hooks.Poststart)+len(g.Hooks.Poststop) != 0 || len(g.Hooks.CreateContainer) != 1 || len(g.Hooks.StartContainer) != 1 {
		t.Errorf("guest hooks %+v: want only createContainer and startContainer", g.Hooks)
	}
	if hs.sysctls["net.ipv4.ip_unprivileged_port_start"] != "0" || len(hs.sysctls) != 1 {
		t.Errorf("host sysctls %v", hs.sysctls)
	}
	if _, ok := g.Linux.Sysctl["net.ipv4.ip_unprivileged_port_start"]; ok || g.Linux.Sysctl["kernel.msgmax"] != "8192" {
		t.Errorf("guest sysctls %v: want kernel.msgmax only", g.Linux.Sysctl)
	}

	// Other host namespaces: invalid (never NotImplemented, see Create).
	s.Linux.Namespaces[0].Path = "/proc/1/ns/pid"
	b, _ = json.Marshal(s)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	if _, _, _, _, err := guestSpec(dir, "9p", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("pid namespace path: %v, want invalid argument", err)
	}
}
