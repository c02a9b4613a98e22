package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Options are the runtime options of DESIGN §7, read from a TOML file
// (ctr run --runtime-config-path) or from the CRI runtime's options table.
type Options struct {
	// Kernel boots with Initrd (an initramfs with /init) or RootFS (a
	// read-only ext4 root disk with /init, for a kernel with virtio-blk
	// and ext4 built in: ours); one of the two. Unset, they are those of
	// the guest directory (defaultGuestDir): its rootfs if it has one,
	// else its initrd.
	Kernel  string `toml:"kernel"`
	Initrd  string `toml:"initrd"`
	RootFS  string `toml:"rootfs"`
	Backend string `toml:"backend"`
	Arch    string `toml:"arch"`
	Accel   string `toml:"accel"`
	// TCGTBSizeMiB is QEMU's TCG translation cache in MiB (accel tcg): a
	// smaller one costs less memory per VM and more retranslation (0: 64).
	TCGTBSizeMiB int      `toml:"tcg_tb_size_mib"`
	CPUs         int      `toml:"cpus"`
	MemoryMiB    int      `toml:"memory_mib"`
	KernelArgs   []string `toml:"kernel_args"`
	// NetworkSetting is the "network" key as written: "cni", "user",
	// "none", or the older true ("user") and false ("none"). Network is
	// the mode it selects.
	NetworkSetting any    `toml:"network"`
	Network        string `toml:"-"`
	// CNI, for network = "cni" without a namespace in the spec:
	// CNIConfDir holds the .conflist files (default /etc/cni/net.d),
	// CNINetwork names the network (default "vz", built in unless the
	// directory defines it), CNIBinDir is where the plugins are (default
	// /opt/cni/bin, else the plugins installed next to the shim).
	CNIConfDir string `toml:"cni_conf_dir"`
	CNIBinDir  string `toml:"cni_bin_dir"`
	CNINetwork string `toml:"cni_network"`
	// ForwardPorts makes the container's listening TCP and UDP ports
	// reachable at the same port on the host's 127.0.0.1, through the
	// shim (default: off on Linux, where the VM has an address of its
	// own; on on macOS, where developers expect localhost).
	ForwardPorts *bool `toml:"forward_ports"`
	DebugConsole bool  `toml:"debug_console"`
	// BootTimeout bounds the wait for the agent, in seconds (default 120).
	BootTimeout int `toml:"boot_timeout"`
	// DiskCaching and DiskSync are VZ's disk image caching mode
	// ("automatic", "cached", "uncached") and synchronization mode of
	// writable disks ("full", "fsync", "none"); "" keeps the backend's
	// choice (vm/vz: cached, fsync). QEMU ignores them.
	DiskCaching string `toml:"disk_caching"`
	DiskSync    string `toml:"disk_sync"`
	// DiskHotplug is how a container that joins a running VM brings its
	// rootfs disks: "virtio" (QEMU's default: virtio-blk in reserved PCIe
	// slots) or "usb" (USB mass storage stamped with the disk's id: VZ's
	// only way; on QEMU it runs the guest's half of VZ's way on Linux, at
	// the price of a copy of each read-only layer image in the bundle).
	DiskHotplug string `toml:"disk_hotplug"`
	// GuestModules names groups of the guest image's optional kernel
	// modules to load at boot (guest.OptionalModules): "bridge" for pods
	// whose privileged containers make bridges. Each costs boot time.
	GuestModules []string `toml:"guest_modules"`
	// WarmStart starts a task's VM from a saved template VM instead of
	// booting it (DESIGN.md §11), where the backend and the task allow;
	// TemplateDir is where the templates are kept (default
	// /var/cache/containerd-vz/templates as root, else the user's cache).
	WarmStart   *bool  `toml:"warm_start"`
	TemplateDir string `toml:"template_dir"`
}

// Network modes.
const (
	networkCNI  = "cni"  // a network namespace with CNI's network (Linux)
	networkUser = "user" // one NIC behind the VMM's NAT (QEMU user, VZ NAT)
	networkNone = "none"
)

// SystemConfigEnv names the system-wide options file in the environment
// containerd gives its shims; DefaultSystemConfig is where it is otherwise.
// Clients that pass no runtime options (nerdctl, Docker-style tools) get
// its settings; a task's own options override it key by key.
const (
	SystemConfigEnv     = "CONTAINERD_VZ_CONFIG"
	DefaultSystemConfig = "/etc/containerd-vz/runtime.toml"
)

var (
	diskCachingModes = []string{"automatic", "cached", "uncached"}
	diskSyncModes    = []string{"full", "fsync", "none"}
)

// optionsFile is where Start keeps the bootstrap's runtime options for the
// serving process, which does not receive them.
const optionsFile = "vz-runtime-options.pb"

// saveBootstrapOptions writes the runtime options of the bootstrap params
// into the bundle (the working directory of Start).
func saveBootstrapOptions(dir string, opts *runtimeoptions.Options) error {
	b, err := proto.Marshal(opts)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, optionsFile), b, 0o600)
}

// loadOptions finds the task's options: those of the Create request, else
// those saved at bootstrap in bundle (if one is given), else none; defaults
// fill the rest.
func loadOptions(bundle string, createOpts *anypb.Any) (Options, error) {
	var ro *runtimeoptions.Options
	if createOpts != nil && createOpts.GetValue() != nil {
		v, err := typeurl.UnmarshalAny(createOpts)
		if err != nil {
			return Options{}, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		o, ok := v.(*runtimeoptions.Options)
		if !ok {
			return Options{}, fmt.Errorf("runtime options of type %T, want runtimeoptions: %w", v, errdefs.ErrInvalidArgument)
		}
		ro = o
	} else if bundle == "" {
		// Info: no task, only the request's options.
	} else if b, err := os.ReadFile(filepath.Join(bundle, optionsFile)); err == nil {
		ro = &runtimeoptions.Options{}
		if err := proto.Unmarshal(b, ro); err != nil {
			return Options{}, fmt.Errorf("saved runtime options: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return Options{}, err
	}
	var o Options
	if err := loadSystemOptions(&o); err != nil {
		return Options{}, err
	}
	if ro != nil {
		body := ro.ConfigBody
		if len(body) == 0 && ro.ConfigPath != "" {
			b, err := os.ReadFile(ro.ConfigPath)
			if err != nil {
				return Options{}, fmt.Errorf("runtime config %s: %w", ro.ConfigPath, err)
			}
			body = b
		}
		// The boot image is one setting in two keys: the task's initrd
		// replaces a system-wide rootfs, and the other way round.
		initrd, rootfs := o.Initrd, o.RootFS
		o.Initrd, o.RootFS = "", ""
		if err := parseOptions(body, &o); err != nil {
			return Options{}, err
		}
		if o.Initrd == "" && o.RootFS == "" {
			o.Initrd, o.RootFS = initrd, rootfs
		}
	}
	if err := o.setDefaults(); err != nil {
		return Options{}, err
	}
	return o, nil
}

// loadSystemOptions reads the system-wide file into o, when there is one.
func loadSystemOptions(o *Options) error {
	path := os.Getenv(SystemConfigEnv)
	if path == "" {
		path = DefaultSystemConfig
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("runtime options %s: %w", path, err)
	}
	if err := parseOptions(b, o); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// parseOptions decodes body into o: keys it has replace o's, others stay.
func parseOptions(body []byte, o *Options) error {
	dec := toml.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		var sme *toml.StrictMissingError
		if errors.As(err, &sme) {
			return fmt.Errorf("runtime options: %s: %w", sme.String(), errdefs.ErrInvalidArgument)
		}
		return fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return o.parseNetwork()
}

// parseNetwork turns the "network" key into Network. The key stays set in
// NetworkSetting, so a file decoded later without it keeps this one's.
func (o *Options) parseNetwork() error {
	switch v := o.NetworkSetting.(type) {
	case nil:
		return nil
	case bool:
		o.Network = networkNone
		if v {
			o.Network = networkUser
		}
	case string:
		o.Network = v
	default:
		return fmt.Errorf("network %v: want one of %v: %w", v, networkModes, errdefs.ErrInvalidArgument)
	}
	if !slices.Contains(networkModes, o.Network) {
		return fmt.Errorf("network %q: want one of %v: %w", o.Network, networkModes, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (o *Options) setDefaults() error {
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Arch != "amd64" && o.Arch != "arm64" {
		return fmt.Errorf("arch %q: want amd64 or arm64: %w", o.Arch, errdefs.ErrInvalidArgument)
	}
	if o.Backend == "" {
		o.Backend = defaultBackend
	}
	if o.DiskCaching != "" && !slices.Contains(diskCachingModes, o.DiskCaching) {
		return fmt.Errorf("disk_caching %q: want one of %v: %w", o.DiskCaching, diskCachingModes, errdefs.ErrInvalidArgument)
	}
	if o.DiskSync != "" && !slices.Contains(diskSyncModes, o.DiskSync) {
		return fmt.Errorf("disk_sync %q: want one of %v: %w", o.DiskSync, diskSyncModes, errdefs.ErrInvalidArgument)
	}
	switch o.DiskHotplug {
	case "", vm.DiskBusVirtio, vm.DiskBusUSB:
	default:
		return fmt.Errorf("disk_hotplug %q: want %s or %s: %w", o.DiskHotplug, vm.DiskBusVirtio, vm.DiskBusUSB, errdefs.ErrInvalidArgument)
	}
	for _, g := range o.GuestModules {
		if g == "" || strings.ContainsAny(g, ", \t\n:") {
			return fmt.Errorf("guest_modules: %q is not a group name: %w", g, errdefs.ErrInvalidArgument)
		}
	}
	if o.Accel == "" {
		o.Accel = defaultAccel(o.Arch)
	}
	if o.TCGTBSizeMiB < 0 {
		return fmt.Errorf("tcg_tb_size_mib %d: want a size in MiB: %w", o.TCGTBSizeMiB, errdefs.ErrInvalidArgument)
	}
	if o.CPUs <= 0 {
		o.CPUs = 2
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = 512
	}
	if o.Network == "" {
		o.Network = defaultNetwork
	}
	if o.WarmStart == nil {
		v := defaultWarmStart
		o.WarmStart = &v
	}
	if o.TemplateDir == "" {
		o.TemplateDir = defaultTemplateDir()
	}
	if o.ForwardPorts == nil {
		v := defaultForwardPorts
		o.ForwardPorts = &v
	}

	if o.BootTimeout <= 0 {
		// Generous: under TCG on a busy host a boot has taken over a
		// minute; a VM that does come up is worth the wait.
		o.BootTimeout = 120
	}
	if o.Initrd != "" && o.RootFS != "" {
		return fmt.Errorf("initrd %s and rootfs %s: set one of them: %w", o.Initrd, o.RootFS, errdefs.ErrInvalidArgument)
	}
	if o.Kernel == "" || (o.Initrd == "" && o.RootFS == "") {
		dir, err := defaultGuestDir(o.Arch)
		if err != nil {
			return err
		}
		if o.Kernel == "" {
			o.Kernel = filepath.Join(dir, "kernel")
		}
		if o.Initrd == "" && o.RootFS == "" {
			o.Initrd, o.RootFS = guestBootImage(dir)
		}
	}
	return nil
}

// guestBootImage is how the guest of a guest directory boots: from its
// root disk when it has one (our kernel: make guest), else from its initrd.
func guestBootImage(dir string) (initrd, rootfs string) {
	if rootfs := filepath.Join(dir, "rootfs"); fileExists(rootfs) {
		return "", rootfs
	}
	return filepath.Join(dir, "initrd"), ""
}

// bootImage is the initrd or the root disk that the kernel boots with.
func (o *Options) bootImage() string {
	if o.RootFS != "" {
		return o.RootFS
	}
	return o.Initrd
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// defaultGuestDir is ../share/containerd-vz/guest/<arch> next to the shim
// binary (an install), or ../guest/<arch> (the _output tree of a checkout).
func defaultGuestDir(arch string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	base := filepath.Dir(filepath.Dir(self))
	candidates := []string{
		filepath.Join(base, "share", "containerd-vz", "guest", arch),
		filepath.Join(base, "guest", arch),
	}
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(c, "kernel")); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("no guest kernel for %s in %s (run make guest, or set kernel and initrd or rootfs in the runtime options): %w",
		arch, strings.Join(candidates, " or "), errdefs.ErrNotFound)
}
