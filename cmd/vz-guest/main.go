// Command vz-guest builds the guest's kernel and initramfs for one
// architecture from a kernel, the static agent and a static runc. The kernel
// is either one built for the guest with everything built in (hack/kernel.sh)
// or a Debian kernel package, whose modules go into the initramfs:
//
//	vz-guest -kernel _output/kernel/amd64/kernel -agent vz-agent -runc runc \
//	    -arch amd64 -out _output/guest/amd64
//	vz-guest -deb linux-image-6.1.0-56-amd64_…_amd64.deb -agent vz-agent -runc runc \
//	    -arch amd64 -out _output/guest/amd64/debian
//
// It writes OUT/kernel and OUT/initrd (or, with -rootfs, OUT/rootfs: a root
// disk the kernel boots from instead of an initramfs) and prints their
// sizes and the modules in the initramfs. Equal inputs give equal bytes; SOURCE_DATE_EPOCH sets the
// mtime of the initramfs entries (default 0). It is pure Go and runs on
// macOS as well as Linux.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vz-shim/containerd-shim-vz/guest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "vz-guest: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg     guest.Config
		out     string
		modules string
	)
	flag.StringVar(&cfg.KernelDeb, "deb", "", "Debian kernel package (linux-image-<release>_<version>_<arch>.deb)")
	flag.StringVar(&cfg.KernelImage, "kernel", "", "kernel with everything built in (x86 bzImage or arm64 Image; hack/kernel.sh)")
	flag.StringVar(&cfg.KernelConfig, "kernel-config", "", "the .config of -kernel, checked for CONFIG_MODULES (default: config beside it, if there)")
	flag.StringVar(&cfg.Agent, "agent", "", "static vz-agent binary for -arch (becomes /init)")
	flag.StringVar(&cfg.Runc, "runc", "", "static runc binary for -arch")
	flag.StringVar(&cfg.Arch, "arch", runtime.GOARCH, "guest architecture: amd64 or arm64")
	flag.StringVar(&out, "out", "", "output directory for kernel and initrd")
	flag.BoolVar(&cfg.Uncompressed, "uncompressed", false, "write the initramfs as a plain cpio archive, not gzip-compressed")
	flag.BoolVar(&cfg.RootFS, "rootfs", false, "write a read-only ext4 root disk (OUT/rootfs) instead of an initramfs; needs -kernel")
	flag.StringVar(&modules, "modules", "", "comma-separated kernel modules to include (default: guest.Modules)")
	flag.Parse()
	if flag.NArg() > 0 || (cfg.KernelDeb == "") == (cfg.KernelImage == "") || cfg.Agent == "" || cfg.Runc == "" || out == "" {
		flag.Usage()
		return fmt.Errorf("need -deb or -kernel, -agent, -runc and -out")
	}
	if cfg.KernelImage != "" && cfg.KernelConfig == "" {
		if c := filepath.Join(filepath.Dir(cfg.KernelImage), "config"); fileExists(c) {
			cfg.KernelConfig = c
		}
	}
	if modules != "" {
		cfg.Modules = strings.Split(modules, ",")
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		t, err := strconv.ParseInt(s, 10, 64)
		if err != nil || t < 0 {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: not a time", s)
		}
		cfg.ModTime = t
	}

	img, err := guest.Build(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	kernel, initrd, rootfs := filepath.Join(out, "kernel"), filepath.Join(out, "initrd"), filepath.Join(out, "rootfs")
	if err := writeFile(kernel, img.Kernel.Image); err != nil {
		return err
	}
	// One of initrd and rootfs: the shim boots the one it finds.
	file, data, stale := initrd, img.Initrd, rootfs
	if cfg.RootFS {
		file, data, stale = rootfs, img.RootFS, initrd
	}
	if err := writeFile(file, data); err != nil {
		return err
	}
	if err := os.Remove(stale); err != nil && !os.IsNotExist(err) {
		return err
	}

	k := img.Kernel
	fmt.Printf("kernel %s (%s): %s, %s\n", k.Release, cfg.Arch, kernel, size(int64(len(k.Image))))
	if cfg.RootFS {
		fmt.Printf("rootfs: %s, %s (ext4, read-only)\n", rootfs, size(int64(len(img.RootFS))))
	} else {
		fmt.Printf("initrd: %s, %s (%s uncompressed)\n", initrd, size(int64(len(img.Initrd))), size(img.InitrdSize))
	}
	var total int64
	for _, m := range k.Modules {
		total += int64(len(m.Data))
	}
	fmt.Printf("modules (%d, %s, load order):\n", len(k.Modules), size(total))
	for _, m := range k.Modules {
		fmt.Printf("  %-32s %-60s %s\n", m.Name, m.Path, size(int64(len(m.Data))))
	}
	if len(k.Builtin) > 0 {
		fmt.Printf("built into the kernel: %s\n", strings.Join(k.Builtin, " "))
	}
	if s := k.Softdeps(); len(s) > 0 {
		fmt.Printf("warning: soft dependencies not in the image: %s\n", strings.Join(s, ", "))
	}
	return nil
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// writeFile replaces file atomically, so a reader never sees half of it.
func writeFile(file string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
