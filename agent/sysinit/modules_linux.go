package sysinit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/vz-shim/containerd-shim-vz/api/modgroups"
)

// module is one entry of modules.dep.
type module struct {
	name string   // kernel module name: "virtio_pci"
	path string   // as written in modules.dep, relative to the modules dir
	deps []string // paths of the direct dependencies
}

// compressed reports whether the kernel must decompress the module file.
func (m module) compressed() bool {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(m.path, ext) {
			return true
		}
	}
	return false
}

// ModulesDir returns /lib/modules/<release> for the running kernel.
func ModulesDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// LoadModules loads every module listed in dir/modules.dep, dependencies
// first, passing each the parameters given for it on cmdline. Modules the
// kernel already has (built in or loaded) are not an error. A missing
// modules.dep means the kernel needs no modules.
//
// A module that fails does not stop the others; the modules that depend on it
// are skipped. The error joins one error per failed or skipped module, each
// naming it. It returns the names of the modules it loaded.
func LoadModules(ctx context.Context, dir string, cmdline Cmdline) ([]string, error) {
	return loadModules(ctx, dir, cmdline, finitModule)
}

// loadFunc loads the module file at path; the seam keeps tests off the
// host's kernel.
type loadFunc func(path, params string, flags int) error

func finitModule(path, params string, flags int) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.FinitModule(fd, params, flags)
}

func loadModules(ctx context.Context, dir string, cmdline Cmdline, load loadFunc) ([]string, error) {
	mods, err := plan(dir)
	if errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithField("dir", dir).Debug("no modules.dep: not loading modules")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if mods, err = selectGroups(dir, mods, cmdline); err != nil {
		return nil, err
	}
	var (
		loaded []string
		errs   []error
		failed = make(map[string]string) // path -> name, for modules not in the kernel
	)
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return loaded, errors.Join(append(errs, err)...)
		}
		if dep := failedDep(m, failed); dep != "" {
			failed[m.path] = m.name
			errs = append(errs, fmt.Errorf("module %s: not loaded: dependency %s failed", m.name, dep))
			continue
		}
		flags := 0
		if m.compressed() {
			flags |= unix.MODULE_INIT_COMPRESSED_FILE
		}
		params := strings.Join(cmdline.ModuleParams(m.name), " ")
		path := m.path
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		switch err := load(path, params, flags); {
		case errors.Is(err, unix.EEXIST):
			log.G(ctx).WithField("module", m.name).Debug("module already present")
		case err != nil:
			failed[m.path] = m.name
			errs = append(errs, fmt.Errorf("load module %s (%s): %w", m.name, path, err))
		default:
			log.G(ctx).WithField("module", m.name).WithField("params", params).Debug("module loaded")
			loaded = append(loaded, m.name)
		}
	}
	return loaded, errors.Join(errs...)
}

func failedDep(m module, failed map[string]string) string {
	for _, d := range m.deps {
		if name, ok := failed[d]; ok {
			return name
		}
	}
	return ""
}

// plan reads dir/modules.dep and returns every module in it, each once,
// dependencies before the modules that need them.
func plan(dir string) ([]module, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()

	byPath := make(map[string]*module)
	var order []string // file order, for a stable plan
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; s.Scan(); line++ {
		text := strings.TrimSpace(s.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		path, deps, ok := strings.Cut(text, ":")
		path = filepath.Clean(strings.TrimSpace(path))
		if !ok || path == "." {
			return nil, fmt.Errorf("%s:%d: malformed line %q", f.Name(), line, text)
		}
		if _, dup := byPath[path]; dup {
			return nil, fmt.Errorf("%s:%d: module %s listed twice", f.Name(), line, path)
		}
		m := &module{name: moduleName(path), path: path}
		for _, d := range strings.Fields(deps) {
			m.deps = append(m.deps, filepath.Clean(d))
		}
		byPath[path] = m
		order = append(order, path)
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}

	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int, len(byPath))
	out := make([]module, 0, len(byPath))
	var stack []string
	var visit func(path string) error
	visit = func(path string) error {
		switch state[path] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", cycleString(stack, path))
		}
		m, ok := byPath[path]
		if !ok {
			// depmod lists every module on a line of its own; a dependency
			// without one still has to be loaded, so treat it as a leaf.
			m = &module{name: moduleName(path), path: path}
			byPath[path] = m
		}
		state[path] = visiting
		stack = append(stack, path)
		for _, d := range m.deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[path] = done
		out = append(out, *m)
		return nil
	}
	for _, p := range order {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func cycleString(stack []string, again string) string {
	var names []string
	for i, p := range stack {
		if p == again {
			for _, q := range stack[i:] {
				names = append(names, moduleName(q))
			}
			break
		}
	}
	return strings.Join(append(names, moduleName(again)), " -> ")
}

// moduleName turns "kernel/drivers/virtio/virtio-pci.ko.xz" into "virtio_pci",
// the name the kernel knows the module by.
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i > 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// selectGroups drops from mods the optional groups (modgroups.File) the
// command line does not ask for (modgroups.CmdlineKey), with the
// dependencies only they need. A group's module the image lacks (built into
// the kernel) is no error.
func selectGroups(dir string, mods []module, cmdline Cmdline) ([]module, error) {
	f, err := os.Open(filepath.Join(dir, modgroups.File))
	if errors.Is(err, os.ErrNotExist) {
		return mods, nil
	}
	if err != nil {
		return nil, err
	}
	groups, err := modgroups.Parse(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	wanted := map[string]bool{}
	if v, ok := cmdline.Get(modgroups.CmdlineKey); ok {
		for _, g := range strings.Split(v, ",") {
			wanted[strings.TrimSpace(g)] = true
		}
	}
	byName := make(map[string]module, len(mods))
	byPath := make(map[string]module, len(mods))
	for _, m := range mods {
		byName[m.name] = m
		byPath[m.path] = m
	}
	closure := func(roots []module) map[string]bool {
		seen := map[string]bool{}
		var visit func(m module)
		visit = func(m module) {
			if seen[m.path] {
				return
			}
			seen[m.path] = true
			for _, d := range m.deps {
				if dm, ok := byPath[d]; ok {
					visit(dm)
				}
			}
		}
		for _, m := range roots {
			visit(m)
		}
		return seen
	}
	var optional, asked []module
	for g, names := range groups {
		for _, n := range names {
			if m, ok := byName[moduleName(n)]; ok {
				optional = append(optional, m)
				if wanted[g] {
					asked = append(asked, m)
				}
			}
		}
	}
	onlyOptional := closure(optional)
	var boot []module
	for _, m := range mods {
		if !onlyOptional[m.path] {
			boot = append(boot, m)
		}
	}
	keep := closure(append(boot, asked...))
	out := mods[:0:0]
	for _, m := range mods {
		if keep[m.path] {
			out = append(out, m)
		}
	}
	return out, nil
}
