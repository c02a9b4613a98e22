package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// The rootfs mounts of snapshotters that hand out block images (ours,
// containerd's erofs in block mode) are a chain: the images first, then a
// mount whose type starts with "format/" and whose options refer to the
// earlier mounts by index ("{{ mount 0 }}/upper", "{{ overlay 1 3 }}").
// containerd's mount manager resolves such chains on the host; here the
// images are disks only the guest sees, so the agent resolves them with the
// same template language and directives.

const (
	transformFormat = "format"
	transformMkdir  = "mkdir"
	// mkdirOption is X-containerd.mkdir.path=DIR[:MODE[:UID:GID]].
	mkdirOption = "X-containerd.mkdir.path="
)

// activeMount is a mount of the chain already done, as templates see it.
type activeMount struct {
	mount.Mount
	mountPoint string
}

// isChain reports whether mounts need the chain resolution: some mount
// names a transformer.
func isChain(mounts []mount.Mount) bool {
	for _, m := range mounts {
		if strings.Contains(m.Type, "/") {
			return true
		}
	}
	return false
}

// mountChain mounts every mount but the last at scratch/<index>, then the
// last, with templates and directives resolved, at root. It returns the
// mountpoints in the order they were mounted, for unmounting in reverse;
// on error nothing stays mounted.
func mountChain(mounts []mount.Mount, root, scratch string) (_ []string, retErr error) {
	var (
		done   []string
		active []activeMount
	)
	defer func() {
		if retErr != nil {
			unmountChain(done)
		}
	}()
	for i, m := range mounts {
		m, err := transformMount(m, active)
		if err != nil {
			return done, fmt.Errorf("rootfs mount %d: %w", i, err)
		}
		target := root
		if i < len(mounts)-1 {
			target = filepath.Join(scratch, strconv.Itoa(i))
			if err := os.MkdirAll(target, 0o700); err != nil {
				return done, err
			}
		}
		if err := m.Mount(target); err != nil {
			return done, fmt.Errorf("rootfs mount %d (%s): %w", i, m.Type, err)
		}
		done = append(done, target)
		active = append(active, activeMount{Mount: m, mountPoint: target})
	}
	return done, nil
}

// unmountChain unmounts mountpoints in reverse order: the overlay before
// the layers under it. Detached, because the overlay's superblock may pin
// its lower mounts a moment longer.
func unmountChain(mountpoints []string) error {
	var first error
	for i := len(mountpoints) - 1; i >= 0; i-- {
		if err := mount.UnmountAll(mountpoints[i], unix.MNT_DETACH); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// transformMount applies the transformers named in m's type ("format/",
// "mkdir/") and returns the plain mount left.
func transformMount(m mount.Mount, active []activeMount) (mount.Mount, error) {
	parts := strings.Split(m.Type, "/")
	m.Type = parts[len(parts)-1]
	for _, t := range parts[:len(parts)-1] {
		var err error
		switch t {
		case transformFormat:
			m, err = formatMount(m, active)
		case transformMkdir:
			m, err = mkdirMount(m, active)
		default:
			err = fmt.Errorf("mount transformer %q: %w", t, errdefs.ErrNotImplemented)
		}
		if err != nil {
			return m, err
		}
	}
	return m, nil
}

// formatMount expands the templates in the source, target and options.
func formatMount(m mount.Mount, active []activeMount) (mount.Mount, error) {
	funcs := templateFuncs(active)
	var err error
	if m.Source, err = expand(m.Source, funcs); err != nil {
		return m, err
	}
	if m.Target, err = expand(m.Target, funcs); err != nil {
		return m, err
	}
	opts := make([]string, len(m.Options))
	for i, o := range m.Options {
		if opts[i], err = expand(o, funcs); err != nil {
			return m, err
		}
	}
	m.Options = opts
	return m, nil
}

func templateFuncs(active []activeMount) template.FuncMap {
	at := func(i int) (activeMount, error) {
		if i < 0 || i >= len(active) {
			return activeMount{}, fmt.Errorf("mount index %d out of range: %d mounts before it: %w", i, len(active), errdefs.ErrInvalidArgument)
		}
		return active[i], nil
	}
	return template.FuncMap{
		"mount": func(i int) (string, error) {
			a, err := at(i)
			return a.mountPoint, err
		},
		"source": func(i int) (string, error) {
			a, err := at(i)
			return a.Source, err
		},
		"target": func(i int) (string, error) {
			a, err := at(i)
			return a.Target, err
		},
		// overlay joins the mountpoints from..to with ":", in that order:
		// the first is overlayfs's topmost lower directory.
		"overlay": func(from, to int) (string, error) {
			step := 1
			if from > to {
				step = -1
			}
			var dirs []string
			for i := from; ; i += step {
				a, err := at(i)
				if err != nil {
					return "", err
				}
				dirs = append(dirs, a.mountPoint)
				if i == to {
					break
				}
			}
			return strings.Join(dirs, ":"), nil
		},
	}
}

func expand(s string, funcs template.FuncMap) (string, error) {
	if !strings.Contains(s, "{{") {
		return s, nil
	}
	t, err := template.New("").Funcs(funcs).Parse(s)
	if err != nil {
		return "", fmt.Errorf("mount template %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	b := &limitedBuilder{max: maxExpanded}
	if err := t.Execute(b, nil); err != nil {
		return "", fmt.Errorf("mount template %q: %w", s, err)
	}
	return b.String(), nil
}

// maxExpanded bounds what one template expands to: a mount option the
// kernel takes is at most a page, and text/template can loop ({{range}}).
const maxExpanded = 64 << 10

// limitedBuilder is a strings.Builder that fails past max bytes.
type limitedBuilder struct {
	strings.Builder
	max int
}

func (b *limitedBuilder) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, fmt.Errorf("expands to more than %d bytes: %w", b.max, errdefs.ErrInvalidArgument)
	}
	return b.Builder.Write(p)
}

// mkdirMount creates the directories the mkdir directives name and drops
// the directives from the options. A directory must lie inside one of the
// chain's earlier mounts: a snapshotter cannot make the agent create
// directories anywhere else in the guest.
func mkdirMount(m mount.Mount, active []activeMount) (mount.Mount, error) {
	var opts []string
	for _, o := range m.Options {
		v, ok := strings.CutPrefix(o, mkdirOption)
		if !ok {
			opts = append(opts, o)
			continue
		}
		if err := mkdirIn(v, active); err != nil {
			return m, fmt.Errorf("mkdir directive %q: %w", o, err)
		}
	}
	m.Options = opts
	return m, nil
}

func mkdirIn(value string, active []activeMount) error {
	parts := strings.Split(value, ":")
	var (
		dir      = parts[0]
		mode     = os.FileMode(0o700)
		uid, gid = -1, -1
	)
	switch len(parts) {
	case 1:
	case 2, 4:
		p, err := strconv.ParseUint(parts[1], 8, 32)
		if err != nil || os.FileMode(p)&^os.ModePerm != 0 {
			return fmt.Errorf("mode %q: %w", parts[1], errdefs.ErrInvalidArgument)
		}
		mode = os.FileMode(p)
		if len(parts) == 4 {
			u, uerr := strconv.Atoi(parts[2])
			g, gerr := strconv.Atoi(parts[3])
			if uerr != nil || gerr != nil || u < 0 || g < 0 {
				return fmt.Errorf("owner %s:%s: %w", parts[2], parts[3], errdefs.ErrInvalidArgument)
			}
			uid, gid = u, g
		}
	default:
		return errdefs.ErrInvalidArgument
	}
	for _, a := range active {
		rel, err := filepath.Rel(a.mountPoint, dir)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		// os.Root keeps symlinks inside the image from leading out of it.
		r, err := os.OpenRoot(a.mountPoint)
		if err != nil {
			return err
		}
		defer r.Close()
		if err := r.MkdirAll(rel, mode); err != nil {
			return err
		}
		if uid >= 0 {
			return r.Lchown(rel, uid, gid)
		}
		return nil
	}
	return fmt.Errorf("%s is not inside an earlier mount of the chain: %w", dir, errdefs.ErrInvalidArgument)
}
