package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/vz-shim/containerd-shim-vz/api/diskstamp"
)

func TestResolveDisks(t *testing.T) {
	sys := t.TempDir()
	for dev, serial := range map[string]string{"vda": "rootfs0\n", "vdb": "rootfs1"} {
		os.MkdirAll(filepath.Join(sys, dev), 0o755)
		os.WriteFile(filepath.Join(sys, dev, "serial"), []byte(serial), 0o644)
	}
	os.MkdirAll(filepath.Join(sys, "loop0"), 0o755) // no serial file

	got, err := resolveDisks(sys, "/dev", []mount.Mount{
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
	_, err = findDisk(sys, "/dev", "missing", 200*time.Millisecond)
	if !errdefs.IsNotFound(err) {
		t.Errorf("missing disk: %v, want not found", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("gave up before the wait was over")
	}
}

// TestFindStampedDisk: a disk without a serial (VZ's USB mass storage) is found by the stamp
// in its first KiB; a serial wins; unstamped, loop and foreign disks are passed over.
func TestFindStampedDisk(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	disk := func(name, serial string, head []byte) {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		if serial != "" {
			os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial), 0o644)
		}
		os.WriteFile(filepath.Join(dev, name), append(head, make([]byte, 4096)...), 0o644)
	}
	stamp := func(id string) []byte {
		b, err := diskstamp.Encode(id)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	disk("vda", "rootfs0", nil)
	disk("sda", "", make([]byte, diskstamp.Size))
	disk("sdb", "", stamp("c2-layer0"))
	disk("sdc", "", append([]byte("\xeb\x3cforeign"), make([]byte, 2048)...))
	disk("loop0", "", stamp("c2-loop"))
	disk("sdd", "", stamp("rootfs0")) // a serial of the same id wins
	os.WriteFile(filepath.Join(sys, "sdd", "serial"), []byte("  \n"), 0o644)

	for id, want := range map[string]string{"c2-layer0": "sdb", "rootfs0": "vda"} {
		got, err := findDisk(sys, dev, id, 0)
		if err != nil || got != filepath.Join(dev, want) {
			t.Errorf("findDisk(%s) = %s %v, want %s", id, got, err, want)
		}
	}
	if got, err := findDisk(sys, dev, "c2-loop", 0); !errdefs.IsNotFound(err) {
		t.Errorf("stamp on a loop device: %s %v, want not found", got, err)
	}
	// A disk that arrives while the agent waits (a USB attach takes a moment).
	go func() {
		time.Sleep(100 * time.Millisecond)
		disk("sde", "", stamp("late"))
	}()
	if got, err := findDisk(sys, dev, "late", 5*time.Second); err != nil || got != filepath.Join(dev, "sde") {
		t.Errorf("late disk: %s %v", got, err)
	}
}
