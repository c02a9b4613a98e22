package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// hostSpec is what of the container's spec the host acts on itself.
type hostSpec struct {
	hooks hostHooks
	// netnsPath is the network namespace the spec names; netnsNew says
	// it asks for a new one.
	netnsPath string
	netnsNew  bool
	// sysctls are the spec's net.* sysctls: they go to the VM, the
	// container's network sandbox.
	sysctls map[string]string
}

// nsMapper turns the host path of a namespace a container joins (CRI's
// /proc/<pid>/ns/ipc of its pod's sandbox) into the path of that namespace
// in the guest; nil, or an error, where there is none.
type nsMapper func(typ specs.LinuxNamespaceType, path string) (string, error)

// guestSpec reads the bundle's config.json and rewrites it for the guest:
// the root becomes the bundle's rootfs directory there, bind mounts of host
// paths come from the VM shares it returns (mounted with fstype), namespace
// paths go through mapNS, the host's hooks, network namespace and net.*
// sysctls move to hostSpec. networkSpec finishes it once the VM's network
// is known.
func guestSpec(bundle, fstype string, mapNS nsMapper) (*specs.Spec, hostSpec, []vm.Share, []*agentapi.Share, error) {
	var hs hostSpec
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, hs, nil, nil, fmt.Errorf("reading config.json: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, hs, nil, nil, fmt.Errorf("malformed config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Root == nil {
		spec.Root = &specs.Root{}
	}
	spec.Root.Path = "rootfs"
	shares, agentShares, err := guestShares(&spec, fstype)
	if err != nil {
		return nil, hs, nil, nil, err
	}
	hs.hooks = takeHostHooks(&spec)
	if spec.Linux != nil {
		for i, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				hs.netnsPath, hs.netnsNew = n.Path, n.Path == ""
				continue
			}
			if n.Path == "" {
				continue
			}
			guest := ""
			if mapNS != nil {
				if guest, err = mapNS(n.Type, n.Path); err != nil {
					return nil, hs, nil, nil, err
				}
			}
			if guest == "" {
				// InvalidArgument, not NotImplemented: containerd takes
				// the latter from Create for "task API v3 unsupported".
				return nil, hs, nil, nil, fmt.Errorf("joining the %s namespace at %s: host namespaces do not exist in the VM: %w", n.Type, n.Path, errdefs.ErrInvalidArgument)
			}
			spec.Linux.Namespaces[i].Path = guest
		}
		for k, v := range spec.Linux.Sysctl {
			if strings.HasPrefix(k, "net.") {
				if hs.sysctls == nil {
					hs.sysctls = map[string]string{}
				}
				hs.sysctls[k] = v
				delete(spec.Linux.Sysctl, k)
			}
		}
	}
	return &spec, hs, shares, agentShares, nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}
