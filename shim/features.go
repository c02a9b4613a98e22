package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// FeaturesFile is the guest runc's `runc features`, written next to the
// guest's kernel and initramfs when they are built (hack/guest.sh).
const FeaturesFile = "runc-features.json"

// guestFeatures reads the features of the runc inside the guest that
// initrd boots: what the shim's Info reports, as the runc shim reports its
// runc's. CRI reads recursive read-only mounts and user namespace support
// from them.
func guestFeatures(initrd string) (*features.Features, error) {
	path := filepath.Join(filepath.Dir(initrd), FeaturesFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f features.Features
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}
