package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// Name is the runtime name containerd knows the shim by.
const Name = "io.containerd.vz.v1"

// NewManager is the shim binary's bootstrap side (start, delete, -info).
func NewManager() shim.Shim { return manager{} }

type manager struct{}

func (manager) Name() string { return Name }

// mountCapabilities tells containerd which mounts the shim performs itself:
// block images become disks and are mounted in the guest, never on the
// host (which may be a Mac). The guest agent resolves "format/" and
// "mkdir/" chains (agent/mountchain.go); both must be claimed, because
// containerd's mount manager honours a claim only for a whole suffix of a
// type's transforms ("format/mkdir/overlay").
var mountCapabilities = &types.MountCapabilities{
	Types:      []string{"ext4", "ext3", "ext2", "xfs", "erofs"},
	Transforms: []string{"format", "mkdir"},
}

// Start re-executes the shim as the long-running server of one task, as
// containerd's runc shim does, and answers with its socket.
func (manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	id := params.GetInstanceID()
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	var ro runtimeoptions.Options
	if found, err := params.FindExtension(&ro); err != nil {
		return nil, fmt.Errorf("reading runtime options: %w", err)
	} else if found {
		if err := saveBootstrapOptions(cwd, &ro); err != nil {
			return nil, err
		}
	}

	socketDir := params.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	// Containers of one group (a pod) share one shim and one VM: the
	// socket is named for the group, and a shim that serves it takes
	// the container.
	grouping := id
	if g := bundleGroup(cwd); g != "" {
		grouping = g
	}
	res := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc"}
	if err := res.AddExtension(mountCapabilities); err != nil {
		return nil, err
	}
	address, err := shim.CreateSocketAddress(ctx, socketDir, params.GetContainerdGrpcAddress(), grouping, false)
	if err != nil {
		return nil, err
	}
	l, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("creating shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			if grouping != id {
				res.Address = address
				return res, nil
			}
			return nil, fmt.Errorf("a shim already serves %s: %w", address, errdefs.ErrAlreadyExists)
		}
		if err := shim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
		if l, err = shim.NewSocket(address); err != nil {
			return nil, err
		}
	}
	f, err := l.File()
	// The server inherits the socket; closing our listener must not
	// unlink it.
	l.SetUnlinkOnClose(false)
	l.Close()
	if err != nil {
		shim.RemoveSocket(address)
		return nil, err
	}
	defer f.Close()
	defer func() {
		if retErr != nil {
			shim.RemoveSocket(address)
		}
	}()

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", params.GetContainerdGrpcAddress()}
	if params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{f}
	// Its own process group: containerd's signals to the start helper
	// must not reach the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Warn("adjusting the shim's OOM score")
	}

	res.Address = address
	return res, nil
}

// Stop is `delete`: containerd's cleanup after a shim that died. It stops a
// VM left behind and removes the shim's files from the bundle.
//
// containerd names the bundle with -bundle; it may be gone already, so
// nothing here needs it to exist.
func (manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundle := ""
	if o, ok := ctx.Value(shim.OptsKey{}).(shim.Opts); ok {
		bundle = o.BundlePath
	}
	if bundle == "" {
		cwd, err := os.Getwd()
		if err != nil {
			return shim.StopStatus{}, fmt.Errorf("no -bundle and no working directory: %w", err)
		}
		bundle = filepath.Join(filepath.Dir(cwd), id)
	}
	// containerd runs this after each task's connection closes. In a
	// group the shim may still serve its other containers, and the VM is
	// theirs: a live shim cleans up after itself.
	if addr := shimAddress(bundle); addr != "" && shim.CanConnect(addr) {
		return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
	}
	if err := cleanupMachine(ctx, filepath.Join(bundle, "vm")); err != nil {
		log.G(ctx).WithError(err).Warn("stopping a leftover VM")
	}
	if err := cleanupPodShare(bundle); err != nil {
		log.G(ctx).WithError(err).Warn("removing a leftover pod share")
	}
	if err := unmountHostRootfs(filepath.Join(bundle, "rootfs")); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting a leftover rootfs")
	}
	// After the VM, which held the namespace's taps.
	if err := cleanupNetwork(ctx, bundle); err != nil {
		log.G(ctx).WithError(err).Warn("removing a leftover network")
	}
	os.RemoveAll(filepath.Join(bundle, "vm"))
	os.Remove(filepath.Join(bundle, optionsFile))
	removeDeadSocket(ctx, bundle)
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// removeDeadSocket removes the socket of a shim that was killed: a shim
// removes its own when it exits, but SIGKILL gives it no chance, and
// containerd leaves it in the socket directory. containerd keeps the
// address in the bundle's bootstrap.json.
func removeDeadSocket(ctx context.Context, bundle string) {
	addr := shimAddress(bundle)
	if addr == "" || shim.CanConnect(addr) {
		return
	}
	// A shim that exited by itself removed it already.
	if err := shim.RemoveSocket(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("removing a dead shim's socket")
	}
}

// shimAddress is the address of the shim of the bundle's task, as
// containerd keeps it in the bundle's bootstrap.json; "" when unknown.
func shimAddress(bundle string) string {
	b, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json"))
	if err != nil {
		return ""
	}
	var res struct {
		Address string `json:"address"`
	}
	if json.Unmarshal(b, &res) != nil {
		return ""
	}
	return res.Address
}

// Info answers `-info`: with the runtime's options (CRI passes them), the
// features of the guest's runc, as the runc shim reports its runc's.
func (manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{
		Name:    Name,
		Version: &types.RuntimeVersion{Version: Version},
	}
	ro, err := shim.ReadRuntimeOptions[*runtimeoptions.Options](optionsR)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	var createOpts *anypb.Any
	if ro != nil {
		if createOpts, err = typeurl.MarshalAnyToProto(ro); err != nil {
			return nil, err
		}
		info.Options = createOpts
	}
	opts, err := loadOptions("", createOpts)
	if err != nil {
		return nil, err
	}
	f, err := guestFeatures(opts.bootImage())
	if err != nil {
		// Without them CRI assumes the least (no recursive read-only
		// mounts); the runtime still works.
		log.G(ctx).WithError(err).Debug("no features of the guest's runc")
		return info, nil
	}
	if info.Features, err = typeurl.MarshalAnyToProto(f); err != nil {
		return nil, err
	}
	return info, nil
}
