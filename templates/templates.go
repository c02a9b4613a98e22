// Package templates is the host's cache of saved template VMs for warm
// start (DESIGN.md §11): one file of VM state per key, made once however
// many shims want it at the same time, never seen half-written.
//
// A directory holds, per key, <key>.state (the saved VM, renamed into place
// once complete and synced), <key>.lock (flock: one maker at a time) and,
// while a maker works, <key>.tmp-* (its scratch directory: the template
// VM's own state, and the state file being written).
package templates

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

const (
	stateSuffix = ".state"
	lockSuffix  = ".lock"
	tmpInfix    = ".tmp-"
	// lockPoll is how often a shim waiting for another's template tries
	// the lock again.
	lockPoll = 50 * time.Millisecond
)

// Cache is a directory of templates.
type Cache struct {
	Dir string
}

// SaveFunc saves a template into the file state (which it creates) using
// work, an empty directory, for the template VM's own files.
type SaveFunc func(ctx context.Context, state, work string) error

// Key names a template by its inputs: every value that changes the saved
// guest (kernel and boot image identity, VM size, kernel arguments, the
// VMM and the shim) must be among parts.
func Key(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// FileID identifies a file's contents cheaply: its path, device, inode,
// size and modification time. A rebuilt kernel or shim gets another.
func FileID(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Sprintf("%s:%d:%d", abs, fi.Size(), fi.ModTime().UnixNano()), nil
	}
	return fmt.Sprintf("%s:%d:%d:%d:%d", abs, st.Dev, st.Ino, fi.Size(), fi.ModTime().UnixNano()), nil
}

// Path is where the template of key is once made.
func (c Cache) Path(key string) string { return filepath.Join(c.Dir, key+stateSuffix) }

// Get returns the template of key, made with save when there is none yet
// (made tells). Shims that want the same missing template at once make it
// once: the others wait on its lock until ctx ends, then find it.
func (c Cache) Get(ctx context.Context, key string, save SaveFunc) (path string, made bool, err error) {
	if err := checkKey(key); err != nil {
		return "", false, err
	}
	path = c.Path(key)
	if usable(path) {
		return path, false, nil
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", false, fmt.Errorf("templates: %w", err)
	}
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if usable(path) {
		return path, false, nil // made while we waited
	}
	// Ours: no other maker runs, so scratch directories left here were a
	// dead maker's.
	stale, _ := filepath.Glob(filepath.Join(c.Dir, key+tmpInfix+"*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	work, err := os.MkdirTemp(c.Dir, key+tmpInfix)
	if err != nil {
		return "", false, fmt.Errorf("templates: %w", err)
	}
	defer os.RemoveAll(work)
	tmp := filepath.Join(work, "state")
	if err := save(ctx, tmp, work); err != nil {
		return "", false, fmt.Errorf("making template %s: %w", key, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", false, fmt.Errorf("templates: %w", err)
	}
	if d, err := os.Open(c.Dir); err == nil {
		_ = d.Sync() // the rename survives a crash
		d.Close()
	}
	return path, true, nil
}

// usable tells whether a complete template is at path.
func usable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// lock takes key's lock file, waiting until ctx ends.
func (c Cache) lock(ctx context.Context, key string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(c.Dir, key+lockSuffix), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("templates: locking %s: %w", key, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("templates: waiting for template %s made by another shim: %w", key, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// Remove deletes the template of key: it failed to restore, and the next
// task makes it anew.
func (c Cache) Remove(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := os.Remove(c.Path(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("templates: %w", err)
	}
	log.G(ctx).WithField("template", key).Warn("template removed")
	return nil
}

// Usage counts the templates and the bytes the directory takes on disk.
func (c Cache) Usage() (templates int, bytes int64, err error) {
	entries, err := os.ReadDir(c.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("templates: %w", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), stateSuffix) {
			templates++
		}
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				bytes += st.Blocks * 512
			}
		}
	}
	return templates, bytes, nil
}

// Prune keeps the keep most recently used templates (by modification
// time: takers touch what they use) and removes the others: a new kernel,
// shim or VM size makes new templates, and the old ones would stay for
// good.
func (c Cache) Prune(ctx context.Context, keep int) error {
	paths, err := filepath.Glob(filepath.Join(c.Dir, "*"+stateSuffix))
	if err != nil {
		return err
	}
	type entry struct {
		path string
		used time.Time
	}
	var all []entry
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			all = append(all, entry{p, fi.ModTime()})
		}
	}
	slices.SortFunc(all, func(a, b entry) int { return b.used.Compare(a.used) })
	var errs []error
	for _, e := range all[min(keep, len(all)):] {
		key := strings.TrimSuffix(filepath.Base(e.path), stateSuffix)
		if err := os.Remove(e.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		os.Remove(filepath.Join(c.Dir, key+lockSuffix))
		log.G(ctx).WithField("template", key).WithField("last_used", e.used).Info("template pruned")
	}
	return errors.Join(errs...)
}

// checkKey keeps a key a plain file name.
func checkKey(key string) error {
	if key == "" || strings.ContainsAny(key, "/.") {
		return fmt.Errorf("templates: key %q: %w", key, errdefs.ErrInvalidArgument)
	}
	return nil
}
