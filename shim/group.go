package shim

import (
	"encoding/json"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// groupAnnotations put containers in one shim and one VM, as the runc shim
// groups them (cmd/containerd-shim-runc-v2/manager): CRI's pod, or our own
// for clients without pods (ctr run --annotation io.containerd.vz.v1.group=G).
var groupAnnotations = []string{
	"io.kubernetes.cri.sandbox-id",
	"io.containerd.vz.v1.group",
}

// groupOf is the group a spec's container belongs to, "" for none.
func groupOf(spec *specs.Spec) string {
	if spec == nil {
		return ""
	}
	for _, a := range groupAnnotations {
		if g := spec.Annotations[a]; g != "" {
			return g
		}
	}
	return ""
}

// bundleGroup is groupOf the bundle's config.json; a bundle it cannot read
// belongs to no group (Create says what is wrong with it).
func bundleGroup(bundle string) string {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return ""
	}
	var spec specs.Spec
	if json.Unmarshal(b, &spec) != nil {
		return ""
	}
	return groupOf(&spec)
}
