package shim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/vz-shim/containerd-shim-vz/templates"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// warmStart is how a task's VM starts from a saved template (DESIGN.md
// §11) and what it falls back to.
type warmStart struct {
	cache templates.Cache
	key   string
	// cold is the VM's config for a cold boot, when the restore fails.
	cold vm.Config
}

// minJoinSlots is how many of a template's hot-plug slots must be left,
// once a grouped VM took its own, for the disks of the containers that join
// it (a booted grouped VM has groupDiskSlots).
const minJoinSlots = groupDiskSlots / 2

// maxTemplates is how many templates a cache keeps: the most recently
// used (a rebuilt kernel or shim, another VM size, each makes one).
const maxTemplates = 8

// templateWait bounds how long a task waits for its template, made by
// itself or by another shim: a template boots like any VM.
const templateWait = 2 * time.Minute

// defaultTemplateDir keeps templates across tasks and reboots: the
// system's cache as root, else the user's.
func defaultTemplateDir() string {
	if os.Geteuid() == 0 {
		return "/var/cache/containerd-vz/templates"
	}
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "containerd-vz", "templates")
	}
	return filepath.Join(os.TempDir(), "containerd-vz-templates-"+strconv.Itoa(os.Geteuid()))
}

// warmConfig returns cfg set to start from a template, and how, making the
// template first when there is none. A task that a template cannot serve,
// or whose template cannot be made, boots cold: nil, cfg, with the reason
// in the log. Never an error for the task.
func warmConfig(ctx context.Context, opts Options, cfg vm.Config) (*warmStart, vm.Config) {
	if opts.WarmStart == nil || !*opts.WarmStart {
		return nil, cfg
	}
	l := log.G(ctx).WithField("id", cfg.ID)
	if why := warmUnfit(cfg); why != "" {
		l.WithField("reason", why).Info("warm start: booting cold")
		return nil, cfg
	}
	tcfg := templateConfig(cfg)
	key, err := templateKey(opts.Backend, tcfg)
	if err != nil {
		l.WithError(err).Info("warm start: booting cold")
		return nil, cfg
	}
	cache := templates.Cache{Dir: opts.TemplateDir}
	tctx, cancel := context.WithTimeout(ctx, templateWait)
	defer cancel()
	start := time.Now()
	path, made, err := cache.Get(tctx, key, func(ctx context.Context, state, work string) error {
		c := tcfg
		c.ID = "template-" + key[:12]
		c.StateDir = work
		c.ConsoleLog = filepath.Join(work, "console.log")
		return saveTemplate(ctx, opts.Backend, c, state)
	})
	if err != nil {
		if errdefs.IsNotImplemented(err) {
			l.WithError(err).Info("warm start: booting cold")
		} else {
			l.WithError(err).Warn("warm start: no template, booting cold")
		}
		return nil, cfg
	}
	if made {
		if err := cache.Prune(ctx, maxTemplates); err != nil {
			l.WithError(err).Warn("warm start: pruning old templates")
		}
		n, bytes, _ := cache.Usage()
		fi, _ := os.Stat(path)
		var size int64
		if fi != nil {
			size = fi.Size()
		}
		l.WithFields(log.Fields{
			"template": key, "took": time.Since(start).Round(time.Millisecond), "size": size,
			"cache": opts.TemplateDir, "templates": n, "cache_bytes": bytes,
		}).Info("warm start: template made")
	}
	// Its mtime tells when it was last used (to whoever cleans the cache).
	now := time.Now()
	_ = os.Chtimes(path, now, now)
	w := &warmStart{cache: cache, key: key, cold: cfg}
	cfg.KernelArgs = tcfg.KernelArgs
	cfg.Restore = path
	return w, cfg
}

// warmUnfit says why a template cannot serve cfg, "" when it can.
func warmUnfit(cfg vm.Config) string {
	switch {
	case cfg.DiskSlots > 0 && cfg.DiskHotplugBus == vm.DiskBusUSB:
		return "a VM that containers join with USB disks (disk_hotplug = \"usb\")"
	case cfg.DiskSlots > 0 && vm.TemplateSlots-len(cfg.Disks)-len(cfg.Shares) < minJoinSlots:
		return "a VM that containers join, with too few of a template's slots left for their disks"
	case len(cfg.Disks)+len(cfg.Shares) > vm.TemplateSlots:
		return strconv.Itoa(len(cfg.Disks)+len(cfg.Shares)) + " disks and shares, more than a template's " + strconv.Itoa(vm.TemplateSlots) + " slots"
	case cfg.NICSlots > vm.TemplateNICSlots:
		return "more NIC slots than a template has"
	}
	return ""
}

// templateConfig is cfg without what is the task's: its template.
func templateConfig(cfg vm.Config) vm.Config {
	t := vm.Config{
		Kernel:       cfg.Kernel,
		Initrd:       cfg.Initrd,
		RootDisk:     cfg.RootDisk,
		Arch:         cfg.Arch,
		CPUs:         cfg.CPUs,
		MemoryMiB:    cfg.MemoryMiB,
		Accel:        cfg.Accel,
		TCGTBSizeMiB: cfg.TCGTBSizeMiB,
	}
	// No NIC at boot, so no DHCP: a restored VM gets its NICs' addresses
	// in Setup. The argument is the template's whatever the task's network.
	for _, a := range cfg.KernelArgs {
		if a != "vz.net=static" {
			t.KernelArgs = append(t.KernelArgs, a)
		}
	}
	t.KernelArgs = append(t.KernelArgs, "vz.net=static")
	return t
}

// templateKey hashes every input of the template t.
func templateKey(backend string, t vm.Config) (string, error) {
	layout, err := templateLayout(backend, t)
	if err != nil {
		return "", err
	}
	parts := []string{backend, layout, t.Arch, t.Accel,
		"cpus=" + strconv.Itoa(t.CPUs), "mem=" + strconv.Itoa(t.MemoryMiB), "tb=" + strconv.Itoa(t.TCGTBSizeMiB),
		"args=" + strings.Join(t.KernelArgs, " "), "version=" + Version}
	files := []string{t.Kernel, t.Initrd, t.RootDisk}
	if self, err := os.Executable(); err == nil {
		files = append(files, self) // a rebuilt shim (and its agent protocol)
	}
	for _, f := range files {
		if f == "" {
			parts = append(parts, "-")
			continue
		}
		id, err := templates.FileID(f)
		if err != nil {
			return "", err
		}
		parts = append(parts, id)
	}
	return templates.Key(parts...), nil
}

// discard removes a template that failed its task.
func (w *warmStart) discard(ctx context.Context, why error) {
	if w == nil {
		return
	}
	log.G(ctx).WithError(why).WithField("template", w.key).Warn("warm start: the template failed; removing it")
	if err := w.cache.Remove(ctx, w.key); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("removing the template")
	}
}
