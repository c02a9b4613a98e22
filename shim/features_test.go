package shim

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestGuestFeatures: the guest runc's features as the shim reports them, user namespaces taken
// back (CRI's pinned host user namespace cannot be joined in the VM).
func TestGuestFeatures(t *testing.T) {
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd")
	if _, err := guestFeatures(initrd); !os.IsNotExist(err) {
		t.Errorf("no features file: %v, want not exist", err)
	}
	body := `{"ociVersionMin":"1.0.0","ociVersionMax":"1.3.0","mountOptions":["rbind","rro","ro"],
"linux":{"namespaces":["cgroup","ipc","mount","network","pid","user","uts"],"mountExtensions":{"idmap":{"enabled":true}}}}`
	if err := os.WriteFile(filepath.Join(dir, FeaturesFile), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := guestFeatures(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(f.MountOptions, "rro") || f.OCIVersionMax != "1.3.0" {
		t.Errorf("features %+v", f)
	}
	if slices.Contains(f.Linux.Namespaces, "user") || *f.Linux.MountExtensions.IDMap.Enabled {
		t.Errorf("user namespaces still reported: %v, idmap %v", f.Linux.Namespaces, *f.Linux.MountExtensions.IDMap.Enabled)
	}
	if !slices.Contains(f.Linux.Namespaces, "network") {
		t.Errorf("namespaces %v", f.Linux.Namespaces)
	}
	if err := os.WriteFile(filepath.Join(dir, FeaturesFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := guestFeatures(initrd); err == nil {
		t.Error("a broken features file was accepted")
	}
}
