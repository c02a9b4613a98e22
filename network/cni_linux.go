//go:build linux

package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/netns"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// DefaultNetwork is the name of the network of DefaultConfList.
const DefaultNetwork = "vz"

// DefaultConfList is the network a task gets when the runtime options name
// none that the CNI configuration directory has: a bridge vz0 on the host
// with a private /16, masquerading outbound traffic, with port mappings and
// the firewall plugin's forwarding rules. The guest has its own loopback, so
// the namespace's lo is not configured.
const DefaultConfList = `{
  "cniVersion": "1.0.0",
  "name": "vz",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "vz0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.89.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}`

// IfName is the interface CNI adds to the namespace.
const IfName = "eth0"

// CNI says where the plugins and configurations are.
type CNI struct {
	// ConfDir holds .conflist files; Network names the one to use. When
	// the directory has no such network and Network is DefaultNetwork (or
	// empty), DefaultConfList is used.
	ConfDir string
	Network string
	// BinDirs are searched for the plugins, in order.
	BinDirs []string
}

// confList finds the network's configuration.
func (c CNI) confList() (*libcni.NetworkConfigList, error) {
	name := c.Network
	if name == "" {
		name = DefaultNetwork
	}
	if c.ConfDir != "" {
		l, err := libcni.LoadNetworkConf(c.ConfDir, name)
		if err == nil {
			return l, nil
		}
		var nf libcni.NotFoundError
		var none libcni.NoConfigsFoundError
		if !errors.As(err, &nf) && !errors.As(err, &none) && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("cni network %q in %s: %w: %w", name, c.ConfDir, err, errdefs.ErrInvalidArgument)
		}
	}
	if name != DefaultNetwork {
		return nil, fmt.Errorf("cni network %q: no .conflist in %q names it: %w", name, c.ConfDir, errdefs.ErrNotFound)
	}
	return libcni.ConfListFromBytes([]byte(DefaultConfList))
}

// sandboxState is what Teardown needs of a Sandbox, kept in a file so that
// a shim that died can still be cleaned up after (containerd's shim delete).
type sandboxState struct {
	NetNS string `json:"netns"`
	// Owned: the shim made the namespace, and removes it.
	Owned       bool            `json:"owned"`
	ContainerID string          `json:"containerID,omitempty"`
	ConfList    json.RawMessage `json:"confList,omitempty"`
	BinDirs     []string        `json:"binDirs,omitempty"`
	// Interfaces Plug joined to taps.
	Interfaces []string `json:"interfaces,omitempty"`
}

// Sandbox is the network namespace of one task's VM: one the shim made
// (with a CNI network in it, or empty for OCI hooks to fill), or one the
// spec named.
type Sandbox struct {
	Path string
	// Result is CNI's answer (DNS, for resolv.conf), if CNI ran; it is
	// there once Wait returned nil.
	Result *current.Result

	stateDir, key string
	st            sandboxState
	// added is closed once CNI's ADD ended, with addErr (nil: no ADD).
	added  chan struct{}
	addErr error
}

// NewSandbox makes a network namespace and, unless c is nil, adds c's
// network to it in the background (Wait), under the name key (unique among
// the host's tasks). Its state lives in stateDir/<key>.json until Teardown.
// On error nothing is left; once it returned, Teardown removes it whatever
// Wait says.
func NewSandbox(ctx context.Context, stateDir, key, containerID string, c *CNI) (_ *Sandbox, retErr error) {
	var list *libcni.NetworkConfigList
	if c != nil {
		var err error
		if list, err = c.confList(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	ns, err := netns.NewNetNS(filepath.Join(stateDir, "ns"))
	if err != nil {
		return nil, fmt.Errorf("creating a network namespace: %w", err)
	}
	s := &Sandbox{Path: ns.GetPath(), stateDir: stateDir, key: key,
		st: sandboxState{NetNS: ns.GetPath(), Owned: true, ContainerID: containerID}}
	if list != nil {
		s.st.ConfList, s.st.BinDirs = list.Bytes, c.BinDirs
	}
	// Written before CNI ADD: a shim that dies half-way is cleaned up
	// with a DEL, which CNI plugins take for what was never added too.
	if err := s.save(); err != nil {
		ns.Remove()
		return nil, err
	}
	defer func() {
		if retErr != nil {
			if err := Teardown(context.WithoutCancel(ctx), stateDir, key); err != nil {
				log.G(ctx).WithError(err).Warn("cleaning up a network that failed")
			}
		}
	}()
	if list == nil {
		return s, nil
	}
	// The plugins run while the VM starts: Wait (Plug) joins them.
	s.added = make(chan struct{})
	go func() {
		defer close(s.added)
		res, err := libcni.NewCNIConfig(c.BinDirs, nil).AddNetworkList(ctx, list, runtimeConf(s.st))
		if err != nil {
			s.addErr = fmt.Errorf("cni network %q (plugins in %v): %w", list.Name, c.BinDirs, err)
			return
		}
		if s.Result, err = current.NewResultFromResult(res); err != nil {
			s.addErr = fmt.Errorf("cni network %q: result: %w", list.Name, err)
		}
	}()
	return s, nil
}

// Wait waits until CNI added the network (NewSandbox runs the plugins in
// the background) and returns their error. A sandbox whose Wait failed is
// still to be torn down.
func (s *Sandbox) Wait(ctx context.Context) error {
	if s.added == nil {
		return nil
	}
	select {
	case <-s.added:
		return s.addErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// JoinSandbox takes the namespace at nsPath, which someone else made and
// will remove (CRI, nerdctl, a user), under the name key.
func JoinSandbox(stateDir, key, nsPath string) (*Sandbox, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	s := &Sandbox{Path: nsPath, stateDir: stateDir, key: key, st: sandboxState{NetNS: nsPath}}
	if err := s.save(); err != nil {
		return nil, err
	}
	return s, nil
}

// Plug joins the namespace's interfaces to taps (Plug), recording them for
// Teardown first.
func (s *Sandbox) Plug(ctx context.Context) (*Attachment, error) {
	if err := s.Wait(ctx); err != nil {
		return nil, err
	}
	a, err := Plug(ctx, s.Path)
	if err != nil {
		return nil, err
	}
	for _, i := range a.Config.Interfaces {
		s.st.Interfaces = append(s.st.Interfaces, i.Name)
	}
	if err := s.save(); err != nil {
		a.Unplug(ctx)
		return nil, err
	}
	return a, nil
}

// DNS is CNI's DNS, if the plugins gave one (after Wait).
func (s *Sandbox) DNS() cnitypes.DNS {
	if s.added != nil {
		select {
		case <-s.added:
		default:
			return cnitypes.DNS{}
		}
	}
	if s.Result == nil {
		return cnitypes.DNS{}
	}
	return s.Result.DNS
}

func (s *Sandbox) save() error { return writeState(s.stateDir, s.key, s.st) }

func runtimeConf(st sandboxState) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: st.ContainerID,
		NetNS:       st.NetNS,
		IfName:      IfName,
		Args:        [][2]string{{"IgnoreUnknown", "1"}},
	}
}

func statePath(stateDir, key string) string { return filepath.Join(stateDir, key+".json") }

func writeState(stateDir, key string, st sandboxState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := statePath(stateDir, key) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(stateDir, key))
}

// Teardown undoes the sandbox key: the taps and redirects in a namespace it
// joined, or CNI's network (the IP goes back to IPAM) and the namespace it
// made. A sandbox that does not exist is no error: it runs again after
// crashes. On error the state stays, for the next try.
func Teardown(ctx context.Context, stateDir, key string) error {
	b, err := os.ReadFile(statePath(stateDir, key))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var st sandboxState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("network state %s: %w", statePath(stateDir, key), err)
	}
	var errs []error
	if !st.Owned {
		if err := UnplugNS(ctx, st.NetNS, st.Interfaces); err != nil {
			errs = append(errs, err)
		}
	}
	if len(st.ConfList) > 0 {
		if list, err := libcni.ConfListFromBytes(st.ConfList); err != nil {
			errs = append(errs, err)
		} else {
			rt := runtimeConf(st)
			if _, err := os.Stat(st.NetNS); err != nil {
				rt.NetNS = "" // CNI DEL without a namespace still frees the IP
			}
			if err := libcni.NewCNIConfig(st.BinDirs, nil).DelNetworkList(ctx, list, rt); err != nil {
				errs = append(errs, fmt.Errorf("cni del: %w", err))
			}
		}
	}
	if st.Owned {
		if err := netns.LoadNetNS(st.NetNS).Remove(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", st.NetNS, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(statePath(stateDir, key))
}
