package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// FeaturesFile is the guest runc's `runc features`, written next to the
// guest's kernel and initramfs when they are built (hack/guest.sh).
const FeaturesFile = "runc-features.json"

// guestFeatures reads the features of the runc inside the guest that
// boot image (initrd or root disk) boots: what the shim's Info reports, as the runc shim reports its
// runc's. CRI reads recursive read-only mounts and user namespace support
// from them.
func guestFeatures(image string) (*features.Features, error) {
	path := filepath.Join(filepath.Dir(image), FeaturesFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f features.Features
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	withoutUserNamespaces(&f)
	return &f, nil
}

// withoutUserNamespaces takes back what the guest's runc can do but the
// shim cannot: CRI's user namespace pods join a user namespace CRI pins on
// the host, which does not exist in the VM (the shim refuses such a spec).
// CRI reports user namespace support from these features, so a kubelet
// would otherwise send pods that fail.
func withoutUserNamespaces(f *features.Features) {
	if f.Linux == nil {
		return
	}
	f.Linux.Namespaces = slices.DeleteFunc(f.Linux.Namespaces, func(ns string) bool { return ns == "user" })
	if m := f.Linux.MountExtensions; m != nil && m.IDMap != nil {
		off := false
		m.IDMap.Enabled = &off
	}
}
