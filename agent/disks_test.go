package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
)

func TestResolveDisks(t *testing.T) {
	sys := t.TempDir()
	for dev, serial := range map[string]string{"vda": "rootfs0\n", "vdb": "rootfs1"} {
		os.MkdirAll(filepath.Join(sys, dev), 0o755)
		os.WriteFile(filepath.Join(sys, dev, "serial"), []byte(serial), 0o644)
	}
	os.MkdirAll(filepath.Join(sys, "loop0"), 0o755) // no serial file

	got, err := resolveDisks(sys, []mount.Mount{
		{Type: "ext4", Source: "disk:rootfs1", Options: []string{"ro"}},
		{Type: "ext4", Source: "disk:rootfs0"},
		{Type: "bind", Source: "/host/dir"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Source != "/dev/vdb" || got[1].Source != "/dev/vda" || got[2].Source != "/host/dir" || got[0].Options[0] != "ro" {
		t.Errorf("resolved to %+v", got)
	}

	start := time.Now()
	_, err = findDisk(sys, "missing", 200*time.Millisecond)
	if !errdefs.IsNotFound(err) {
		t.Errorf("missing disk: %v, want not found", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("gave up before the wait was over")
	}
}
