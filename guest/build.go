package guest

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"

	"github.com/vz-shim/containerd-shim-vz/api/modgroups"
	"github.com/vz-shim/containerd-shim-vz/guest/kmod"
)

// Where things are in the initramfs. The agent runs runc from PATH
// (/usr/sbin:/usr/bin:/sbin:/bin) and loads modules from
// /lib/modules/<release>/modules.dep.
const (
	InitPath = "init"
	RuncPath = "usr/bin/runc"
)

// mountpoints the agent mounts on or uses before it creates anything.
var baseDirs = []string{"dev", "etc", "mnt", "proc", "run", "sys", "tmp"}

// Config says what goes into a guest image.
type Config struct {
	Arch string // "amd64" or "arm64"
	// The kernel: a Debian linux-image-<release> package, whose modules
	// the image carries, or KernelImage (and its .config, KernelConfig), a
	// kernel with everything built in (hack/kernel.sh). Exactly one.
	KernelDeb    string
	KernelImage  string
	KernelConfig string
	Agent        string // static vz-agent for Arch, the initramfs's /init
	Runc         string // static runc for Arch
	// Modules are the modules to include, with their dependencies; nil
	// means the package's Modules.
	Modules []string
	// Optional are groups of modules included but loaded only on request
	// (api/modgroups); nil means the package's OptionalModules.
	Optional map[string][]string
	// ModTime is the mtime of every initramfs entry (SOURCE_DATE_EPOCH).
	ModTime int64
	// Uncompressed leaves the initramfs a plain cpio archive, which the
	// kernel unpacks faster than a gzip one (no decompression: about 0.6 s
	// less under TCG here), at the cost of a larger file.
	Uncompressed bool
	// RootFS makes a root disk (an ext4 image) instead of an initramfs;
	// only for a kernel with everything built in, which can mount it
	// without modules.
	RootFS bool
}

// Image is a built guest: a kernel and its initramfs or its root disk.
type Image struct {
	Kernel *Kernel
	// Initrd is the newc cpio archive, gzip-compressed unless
	// Config.Uncompressed; InitrdSize its size before compression.
	Initrd     []byte
	InitrdSize int64
	// RootFS is the ext4 root disk (Config.RootFS), instead of Initrd.
	RootFS []byte
}

// Build reads the kernel and the binaries named by cfg and builds the guest
// image in memory. Equal inputs give equal bytes.
func Build(cfg Config) (*Image, error) {
	if (cfg.KernelDeb == "") == (cfg.KernelImage == "") {
		return nil, errors.New("need exactly one of a kernel package and a kernel image")
	}
	if cfg.RootFS && cfg.KernelDeb != "" {
		// Its virtio_blk and ext4 are modules, which live in an initramfs.
		return nil, errors.New("a root disk needs a kernel with everything built in, not a kernel package")
	}
	names := cfg.Modules
	if names == nil {
		names = Modules
	}
	optional := cfg.Optional
	if optional == nil {
		optional = OptionalModules
	}
	names = slices.Clone(names)
	for _, g := range slices.Sorted(maps.Keys(optional)) {
		names = append(names, optional[g]...)
	}
	agent, err := readStatic(cfg.Agent, cfg.Arch)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	runc, err := readStatic(cfg.Runc, cfg.Arch)
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	var k *Kernel
	if cfg.KernelImage != "" {
		// Everything is built in: no modules, no groups of them.
		k, err = ReadKernelImage(cfg.KernelImage, cfg.KernelConfig, cfg.Arch)
		optional = nil
	} else {
		k, err = ReadKernelDeb(cfg.KernelDeb, cfg.Arch, names)
	}
	if err != nil {
		return nil, err
	}
	fs, err := Layout(k, agent, runc, optional)
	if err != nil {
		return nil, err
	}
	fs.ModTime = cfg.ModTime
	if cfg.RootFS {
		b, err := ext4Bytes(fs)
		if err != nil {
			return nil, err
		}
		return &Image{Kernel: k, RootFS: b}, nil
	}
	var (
		buf  bytes.Buffer
		size int64
	)
	if cfg.Uncompressed {
		err = fs.WriteCpio(&buf)
		size = int64(buf.Len())
	} else {
		size, err = fs.WriteGzip(&buf)
	}
	if err != nil {
		return nil, err
	}
	return &Image{Kernel: k, Initrd: buf.Bytes(), InitrdSize: size}, nil
}

// Layout returns the initramfs of a guest: the agent as /init, runc, the
// kernel's modules with a modules.dep of just those and the groups of
// optional ones (modgroups.File), the device nodes the Go runtime needs
// before devtmpfs is mounted, and empty mountpoints. Nothing else: no
// shell, no libraries.
func Layout(k *Kernel, agent, runc []byte, optional map[string][]string) (*Initramfs, error) {
	fs := &Initramfs{}
	for _, d := range baseDirs {
		perm := uint32(0o755)
		if d == "tmp" {
			perm = 0o1777
		}
		if err := fs.AddDir(d, perm); err != nil {
			return nil, err
		}
	}
	steps := []error{
		fs.AddFile(InitPath, 0o755, agent),
		fs.AddFile(RuncPath, 0o755, runc),
		fs.AddCharDevice("dev/console", 0o600, 5, 1),
		fs.AddCharDevice("dev/null", 0o666, 1, 3),
	}
	for _, err := range steps {
		if err != nil {
			return nil, err
		}
	}
	if len(k.Modules) == 0 && len(optional) == 0 {
		// A kernel with everything built in; no modules.dep tells the
		// agent to load nothing.
		return fs, nil
	}
	modDir := path.Join("lib/modules", k.Release)
	if err := fs.AddDir(modDir, 0o755); err != nil {
		return nil, err
	}
	mods := make([]kmod.Module, 0, len(k.Modules))
	for _, m := range k.Modules {
		if err := fs.AddFile(path.Join(modDir, m.Path), 0o644, m.Data); err != nil {
			return nil, err
		}
		mods = append(mods, m.Module)
	}
	var dep bytes.Buffer
	if err := kmod.WriteDep(&dep, mods, k.Order); err != nil {
		return nil, err
	}
	if err := fs.AddFile(path.Join(modDir, "modules.dep"), 0o644, dep.Bytes()); err != nil {
		return nil, err
	}
	if len(optional) > 0 {
		var groups bytes.Buffer
		if err := modgroups.Write(&groups, optional); err != nil {
			return nil, err
		}
		if err := fs.AddFile(path.Join(modDir, modgroups.File), 0o644, groups.Bytes()); err != nil {
			return nil, err
		}
	}
	return fs, nil
}

// readStatic reads a binary that must run in the guest as it is: a
// statically linked Linux executable for arch.
func readStatic(file, arch string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		return nil, fmt.Errorf("%s: built for %v, not %s", file, f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s: dynamically linked; the guest has no libraries", file)
		}
	}
	return b, nil
}
