// Package kmod reads what Linux kernel modules declare about themselves and
// writes the modules.dep file that the guest agent loads them from, in the
// format of kmod's depmod, without running depmod (which needs Linux).
package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strings"
)

// Info is what a module file says about itself, mostly in its .modinfo section.
type Info struct {
	Name    string   // the name the kernel knows: "virtio_pci"
	Depends []string // modules it needs loaded first (depends=)
	// Softdeps are modules it asks modprobe to load around it (softdep=
	// pre: and post:), by name or alias; not part of modules.dep.
	Softdeps []string
	Aliases  []string
	// Exports is whether it exports symbols: only such modules can be
	// dependencies of others.
	Exports bool
}

// ParseInfo reads the .modinfo section of a module's ELF file (not
// compressed). The name comes from the file name when the module does not
// state it.
func ParseInfo(file string, data []byte) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return Info{}, fmt.Errorf("module %s: %w", file, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, fmt.Errorf("module %s: no .modinfo section", file)
	}
	raw, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("module %s: .modinfo: %w", file, err)
	}
	info := parseModinfo(raw)
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, "__ksymtab") && s.Size > 0 {
			info.Exports = true
		}
	}
	if info.Name == "" {
		info.Name = Name(file)
	}
	return info, nil
}

// parseModinfo parses NUL-separated key=value strings.
func parseModinfo(raw []byte) Info {
	var info Info
	for _, kv := range bytes.Split(raw, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			info.Name = v
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					info.Depends = append(info.Depends, Name(d))
				}
			}
		case "softdep":
			// "pre: crc32c post: foo"
			for _, f := range strings.Fields(v) {
				if !strings.HasSuffix(f, ":") {
					info.Softdeps = append(info.Softdeps, f)
				}
			}
		case "alias":
			info.Aliases = append(info.Aliases, v)
		}
	}
	return info
}

// Name returns the kernel's name for a module file or module:
// "kernel/drivers/char/hw_random/virtio-rng.ko.xz" -> "virtio_rng".
func Name(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i > 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ParseBuiltin reads modules.builtin (one module path per line) and returns
// the names of the modules built into the kernel.
func ParseBuiltin(r io.Reader) (map[string]bool, error) {
	names := make(map[string]bool)
	s := bufio.NewScanner(r)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" {
			names[Name(line)] = true
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("modules.builtin: %w", err)
	}
	return names, nil
}

// uncompressed returns a module path without its compression extension.
func uncompressed(p string) string {
	if i := strings.LastIndex(p, ".ko"); i >= 0 {
		return p[:i+len(".ko")]
	}
	return p
}

// Module is a module file of a kernel's modules directory.
type Module struct {
	// Path is relative to /lib/modules/<release>, as in modules.dep:
	// "kernel/fs/ext4/ext4.ko".
	Path string
	Info
}

// Resolve returns the modules named and, recursively, those they depend
// on, dependencies first, each once. all maps module names to the kernel's
// modules; builtin names the modules built into the kernel, which need no
// file: a wanted name that is built in is left out (and its dependencies
// with it, since the kernel has them too).
func Resolve(all map[string]Module, builtin map[string]bool, names []string) ([]Module, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int)
	var (
		out   []Module
		errs  []error
		visit func(name string, chain []string) error
	)
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		m, ok := all[name]
		if !ok {
			if builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) == 0 {
				return fmt.Errorf("module %s: neither a module file nor built into the kernel", name)
			}
			return fmt.Errorf("module %s (needed by %s): not found", name, strings.Join(chain, " <- "))
		}
		state[name] = visiting
		deps := slices.Clone(m.Depends)
		sort.Strings(deps) // a stable order whatever .modinfo says
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		out = append(out, m)
		return nil
	}
	for _, n := range names {
		if err := visit(Name(n), nil); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// WriteDep writes modules.dep for mods, which must be in load order with
// every dependency present (as Resolve returns them). Like depmod, each line
// lists a module and all of its dependencies, direct or not, the one to load
// first last; lines follow order (the kernel's modules.order, paths as in
// Module.Path), then path order for modules it does not list.
func WriteDep(w io.Writer, mods []Module, order []string) error {
	byName := make(map[string]int, len(mods)) // name -> load index
	for i, m := range mods {
		byName[m.Name] = i
	}
	// modules.order names modules as built (.ko), before compression.
	rank := make(map[string]int, len(order))
	for i, p := range order {
		rank[uncompressed(p)] = i
	}
	lines := slices.Clone(mods)
	sort.SliceStable(lines, func(i, j int) bool {
		ri, iok := rank[uncompressed(lines[i].Path)]
		rj, jok := rank[uncompressed(lines[j].Path)]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok
		}
		return lines[i].Path < lines[j].Path
	})
	lines = softdepsFirst(lines)

	bw := bufio.NewWriter(w)
	for _, m := range lines {
		deps := make(map[int]bool)
		var walk func(Module) error
		walk = func(m Module) error {
			for _, d := range m.Depends {
				i, ok := byName[d]
				if !ok {
					return fmt.Errorf("modules.dep: %s needs %s, which is not in the set", m.Name, d)
				}
				if !deps[i] {
					deps[i] = true
					if err := walk(mods[i]); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := walk(m); err != nil {
			return err
		}
		idx := make([]int, 0, len(deps))
		for i := range deps {
			idx = append(idx, i)
		}
		sort.Sort(sort.Reverse(sort.IntSlice(idx)))
		bw.WriteString(m.Path + ":")
		for _, i := range idx {
			bw.WriteString(" " + mods[i].Path)
		}
		bw.WriteString("\n")
	}
	return bw.Flush()
}

// softdepsFirst moves each module that another's soft dependency names (by
// name or alias) before that module: the agent loads modules.dep in line
// order and does not follow soft dependencies, and some module inits fail
// without theirs (libcrc32c allocates "crc32c", which crc32c_generic
// provides, and returns ENOENT without it).
func softdepsFirst(lines []Module) []Module {
	provides := func(m Module, name string) bool {
		return m.Name == Name(name) || slices.Contains(m.Aliases, name)
	}
	// Each pass moves one module earlier; a cycle of soft dependencies
	// cannot make it loop forever.
	for range len(lines) * len(lines) {
		moved := false
		for i, m := range lines {
			for _, s := range m.Softdeps {
				j := slices.IndexFunc(lines, func(p Module) bool { return p.Name != m.Name && provides(p, s) })
				if j > i {
					p := lines[j]
					lines = slices.Insert(slices.Delete(lines, j, j+1), i, p)
					moved = true
					break
				}
			}
			if moved {
				break
			}
		}
		if !moved {
			break
		}
	}
	return lines
}
