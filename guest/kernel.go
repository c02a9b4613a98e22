package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/s2"

	"github.com/vz-shim/containerd-shim-vz/guest/deb"
	"github.com/vz-shim/containerd-shim-vz/guest/kmod"
)

// Kernel is what the guest takes from a Debian kernel package.
type Kernel struct {
	Release string // uname -r: "6.1.0-56-amd64"
	// Image boots by direct kernel boot: on amd64 the uncompressed ELF
	// vmlinux with a PVH entry (or the bzImage if it has none), on arm64 an
	// uncompressed Image (VZ cannot boot a compressed one).
	Image []byte
	// Modules are the module files the guest needs, in load order.
	Modules []ModuleFile
	// Builtin are the wanted modules the kernel has built in.
	Builtin []string
	// Order is the kernel's modules.order (module paths).
	Order []string
	// Config is the kernel's build configuration (boot/config-*).
	Config map[string]string

	builtin map[string]bool
}

// ModuleFile is a module and the bytes of its file.
type ModuleFile struct {
	kmod.Module
	Data []byte
}

// ReadKernelDeb reads the kernel package at debPath (linux-image-<release>)
// for arch and takes from it the kernel image and the modules named, with
// their dependencies.
//
// It reads the package once (decompressing it takes most of the time):
// it keeps the files of the modules known to be needed so far, and a
// compressed copy of those that export symbols, the only ones that a module
// found later may depend on. Should a dependency still be missing, a second,
// shorter read fetches it.
func ReadKernelDeb(debPath, arch string, names []string) (*Kernel, error) {
	k := &Kernel{}
	r := &debReader{
		k:     k,
		all:   make(map[string]kmod.Module),
		data:  make(map[string][]byte),
		spare: make(map[string][]byte),
		need:  make(map[string]bool),
		paths: make(map[string]string),
	}
	for _, n := range names {
		r.need[kmod.Name(n)] = true
	}
	if err := walkDeb(debPath, r.first); err != nil {
		return nil, err
	}
	if k.Release == "" || k.Image == nil {
		return nil, fmt.Errorf("%s: no boot/vmlinuz-*: not a kernel package", debPath)
	}
	if r.err != nil {
		return nil, fmt.Errorf("%s: %w", debPath, r.err)
	}
	if r.release != k.Release {
		return nil, fmt.Errorf("%s: kernel %s but modules for %q", debPath, k.Release, r.release)
	}
	img, err := bootImage(arch, k.Image)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", debPath, err)
	}
	k.Image = img

	mods, err := kmod.Resolve(r.all, k.builtin, names)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", debPath, err)
	}
	if err := r.fetch(debPath, mods); err != nil {
		return nil, err
	}
	for _, m := range mods {
		mf := ModuleFile{Module: m, Data: r.data[m.Path]}
		if mf, err = k.loadable(mf); err != nil {
			return nil, err
		}
		k.Modules = append(k.Modules, mf)
	}
	for _, n := range names {
		if k.builtin[kmod.Name(n)] {
			k.Builtin = append(k.Builtin, kmod.Name(n))
		}
	}
	return k, nil
}

// debReader collects a kernel package's files on the first read.
type debReader struct {
	k       *Kernel
	release string                 // of the modules directory
	err     error                  // inconsistent package
	all     map[string]kmod.Module // by name
	paths   map[string]string      // name -> path, to catch duplicates
	data    map[string][]byte      // module path -> file
	// spare holds s2-compressed files of exporters not needed so far.
	spare map[string][]byte
	need  map[string]bool // names known to be needed so far
}

func (r *debReader) first(name string, h *tar.Header, rd io.Reader) error {
	switch {
	case strings.HasPrefix(name, "boot/vmlinuz-"):
		if r.k.Image != nil {
			return fmt.Errorf("two kernels in the package: %s", name)
		}
		b, err := io.ReadAll(rd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.k.Image = b
		r.k.Release = strings.TrimPrefix(name, "boot/vmlinuz-")
		return nil
	case strings.HasPrefix(name, "boot/config-"):
		cfg, err := parseConfig(rd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.k.Config = cfg
		return nil
	}
	rel, ok := r.modulePath(name)
	if !ok {
		return nil
	}
	switch {
	case rel == "modules.builtin":
		b, err := kmod.ParseBuiltin(rd)
		if err != nil {
			return err
		}
		r.k.builtin = b
	case rel == "modules.order":
		s := bufio.NewScanner(rd)
		for s.Scan() {
			if l := strings.TrimSpace(s.Text()); l != "" {
				r.k.Order = append(r.k.Order, l)
			}
		}
		return s.Err()
	case isModule(rel) && h.Typeflag == tar.TypeReg:
		b, err := io.ReadAll(rd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		elfData, err := deb.Decompress(rel, b)
		if err != nil {
			return fmt.Errorf("module %w", err)
		}
		info, err := kmod.ParseInfo(rel, elfData)
		if err != nil {
			return err
		}
		if p, dup := r.paths[info.Name]; dup {
			return fmt.Errorf("module %s is both %s and %s", info.Name, p, rel)
		}
		r.paths[info.Name] = rel
		r.all[info.Name] = kmod.Module{Path: rel, Info: info}
		switch {
		case r.need[info.Name]:
			r.data[rel] = b
			for _, d := range info.Depends {
				r.needDeps(d)
			}
		case info.Exports:
			r.spare[rel] = s2.Encode(nil, b)
		}
	}
	return nil
}

// fetch makes sure the files of mods are at hand: kept on the first read,
// decompressed from the spare copies, or read again from the package.
func (r *debReader) fetch(debPath string, mods []kmod.Module) error {
	missing := make(map[string]bool)
	for _, m := range mods {
		if _, ok := r.data[m.Path]; ok {
			continue
		}
		if z, ok := r.spare[m.Path]; ok {
			b, err := s2.Decode(nil, z)
			if err != nil {
				return fmt.Errorf("module %s: %w", m.Path, err)
			}
			r.data[m.Path] = b
			continue
		}
		missing[m.Path] = true
	}
	r.spare = nil
	if len(missing) == 0 {
		return nil
	}
	err := walkDeb(debPath, func(name string, h *tar.Header, rd io.Reader) error {
		rel, ok := r.modulePath(name)
		if !ok || !missing[rel] {
			return nil
		}
		b, err := io.ReadAll(rd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.data[rel] = b
		delete(missing, rel)
		if len(missing) == 0 {
			return deb.ErrStop
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: module files vanished on the second read", debPath)
	}
	return nil
}

// needDeps marks name and what it is known to depend on as needed, keeping
// files already passed over.
func (r *debReader) needDeps(name string) {
	if r.need[name] {
		return
	}
	r.need[name] = true
	if m, seen := r.all[name]; seen {
		for _, d := range m.Depends {
			r.needDeps(d)
		}
	}
}

// modulePath returns a package path relative to the modules directory
// (lib/modules/<release>, or usr/lib/modules/<release> in merged-/usr
// packages) and records the release it is for.
func (r *debReader) modulePath(name string) (string, bool) {
	name = strings.TrimPrefix(name, "usr/")
	rest, ok := strings.CutPrefix(name, "lib/modules/")
	if !ok {
		return "", false
	}
	release, rel, ok := strings.Cut(rest, "/")
	if !ok || rel == "" {
		return "", false
	}
	if r.release == "" {
		r.release = release
	} else if release != r.release {
		r.err = fmt.Errorf("modules of two kernels: lib/modules/%s and lib/modules/%s", r.release, release)
	}
	return rel, true
}

func isModule(p string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(p, ext) {
			return true
		}
	}
	return false
}

// loadable returns the module as the guest should hold it: as shipped when
// the kernel decompresses modules of its format itself (the agent passes
// MODULE_INIT_COMPRESSED_FILE), else decompressed.
func (k *Kernel) loadable(m ModuleFile) (ModuleFile, error) {
	ext := path.Ext(m.Path)
	format := map[string]string{".xz": "XZ", ".zst": "ZSTD", ".gz": "GZIP"}[ext]
	if format == "" {
		return m, nil
	}
	if k.Config["CONFIG_MODULE_DECOMPRESS"] == "y" && k.Config["CONFIG_MODULE_COMPRESS_"+format] == "y" {
		return m, nil
	}
	b, err := deb.Decompress(m.Path, m.Data)
	if err != nil {
		return m, fmt.Errorf("module %w", err)
	}
	m.Path = strings.TrimSuffix(m.Path, ext)
	m.Data = b
	return m, nil
}

// Softdeps returns the soft dependencies of the guest's modules that no
// module of the guest, nor the kernel, provides by name or alias: the
// agent, unlike modprobe, does not follow them, so they may be missing.
func (k *Kernel) Softdeps() []string {
	provided := make(map[string]bool)
	for _, m := range k.Modules {
		provided[m.Name] = true
		for _, a := range m.Aliases {
			provided[a] = true
		}
	}
	var out []string
	for _, m := range k.Modules {
		for _, s := range m.Softdeps {
			if !provided[s] && !provided[kmod.Name(s)] && !k.builtin[kmod.Name(s)] {
				out = append(out, m.Name+" -> "+s)
			}
		}
	}
	return out
}

// walkDeb calls fn for each entry of the package's data, with its name
// cleaned of the leading "./".
func walkDeb(debPath string, fn func(name string, h *tar.Header, r io.Reader) error) error {
	f, err := os.Open(debPath)
	if err != nil {
		return err
	}
	defer f.Close()
	err = deb.Walk(f, func(h *tar.Header, r io.Reader) error {
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		return fn(name, h, r)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", debPath, err)
	}
	return nil
}

func parseConfig(r io.Reader) (map[string]string, error) {
	cfg := make(map[string]string)
	s := bufio.NewScanner(r)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = strings.Trim(v, `"`)
		}
	}
	return cfg, s.Err()
}

// bootImage checks that img boots on arch by direct kernel boot, and
// decompresses a gzip-compressed arm64 Image.
func bootImage(arch string, img []byte) ([]byte, error) {
	switch arch {
	case "amd64":
		// The x86 boot protocol's header.
		if len(img) < 0x206 || string(img[0x202:0x206]) != "HdrS" {
			return nil, errors.New("vmlinuz is not an x86 bzImage")
		}
		if elf, ok, err := vmlinux(img); err != nil {
			return nil, fmt.Errorf("vmlinuz: %w", err)
		} else if ok {
			return elf, nil
		}
		return img, nil
	case "arm64":
		if len(img) > 2 && img[0] == 0x1f && img[1] == 0x8b {
			zr, err := gzip.NewReader(bytes.NewReader(img))
			if err != nil {
				return nil, fmt.Errorf("vmlinuz: %w", err)
			}
			if img, err = io.ReadAll(zr); err != nil {
				return nil, fmt.Errorf("vmlinuz: %w", err)
			}
		}
		// arm64's booting.rst: magic "ARM\x64" at offset 0x38.
		if len(img) < 0x40 || string(img[0x38:0x3c]) != "ARM\x64" {
			return nil, errors.New("vmlinuz is not an arm64 Image")
		}
		return img, nil
	}
	return nil, fmt.Errorf("unsupported arch %q", arch)
}

// ReadKernelImage reads a kernel built for the guest with everything built
// in (hack/kernel.sh): an x86 bzImage or an arm64 Image, and config, its
// .config when not empty. It takes the release from the kernel's banner and
// fails when config shows modules enabled: the image carries none.
func ReadKernelImage(file, config, arch string) (*Kernel, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	img, err := bootImage(arch, b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	k := &Kernel{Image: img}
	if k.Release, err = KernelRelease(img); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if config != "" {
		f, err := os.Open(config)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if k.Config, err = parseConfig(f); err != nil {
			return nil, fmt.Errorf("%s: %w", config, err)
		}
		if k.Config["CONFIG_MODULES"] == "y" {
			return nil, fmt.Errorf("%s: CONFIG_MODULES=y: the guest image has no modules, build everything in", config)
		}
	}
	return k, nil
}

// KernelRelease finds the release (uname -r) in the kernel's "Linux version
// <release> (builder) #…" banner, which an uncompressed image (vmlinux,
// arm64 Image) holds as text. A printf template of it (with "%s") is not
// the banner.
func KernelRelease(img []byte) (string, error) {
	const prefix = "Linux version "
	for rest := img; ; {
		i := bytes.Index(rest, []byte(prefix))
		if i < 0 {
			return "", errors.New("no \"Linux version\" banner: not an uncompressed kernel image")
		}
		rest = rest[i+len(prefix):]
		end := bytes.IndexAny(rest, " \x00\n")
		if end <= 0 {
			continue
		}
		if r := string(rest[:end]); !strings.Contains(r, "%") && r[0] >= '0' && r[0] <= '9' {
			return r, nil
		}
	}
}
