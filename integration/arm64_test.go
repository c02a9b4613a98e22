package integration

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vz-shim/containerd-shim-vz/guest"
	"github.com/vz-shim/containerd-shim-vz/guest/deb"
)

const arm64ImageName = "localhost/vztest/busybox-arm64:latest"

// TestArm64Guest: an arm64 container runs in an arm64 VM (qemu-system-aarch64 -M virt under TCG)
// through the shim and containerd, on any host: it sees the aarch64 machine and the arm64 guest
// kernel, and its task deletes cleanly. The vz runtime only: the runc shim would run the arm64
// busybox on the host, which cannot execute it (no binfmt_misc emulation on these machines).
//
// Its files come from `make guest ARCH=arm64` (part of `make test`). With CI=true their absence
// fails the test; elsewhere it skips, saying what to run.
func TestArm64Guest(t *testing.T) {
	rt := runtimeCase{name: "vz-arm64", runtime: vzRuntime, vm: true}
	if reason := rt.skipReason(); reason != "" {
		t.Skip(skipPrefix + reason)
	}
	g, err := findArm64Guest()
	if err != nil {
		missingPrereq(t, "arm64 guest prerequisites: "+err.Error())
	}
	release, err := kernelRelease(g.kernel)
	if err != nil {
		t.Fatal(err)
	}

	// Imported before the harness takes its baseline: the image's layer snapshot is not a leak.
	busybox := filepath.Join(t.TempDir(), "busybox")
	if err := extractDebFile(g.busyboxDeb, "./bin/busybox", busybox); err != nil {
		t.Fatal(err)
	}
	if err := suite.d.importBusybox(arm64ImageName, busybox, "arm64", snapshotter); err != nil {
		t.Fatal(err)
	}

	h := newHarness(t, rt)
	cfg := filepath.Join(h.d.dir, "vz-arm64.toml")
	q := strconv.Quote
	if err := os.WriteFile(cfg, []byte(`arch = "arm64"
accel = "tcg"
kernel = `+q(g.kernel)+`
rootfs = `+q(g.rootfs)+`
`), 0o600); err != nil {
		t.Fatal(err)
	}

	id := h.newID("arm64")
	args := []string{"run", "--rm", "--platform", "linux/arm64", "--runtime", vzRuntime,
		"--runtime-config-path", cfg, "--snapshotter", snapshotter}
	args = append(args, h.fifoFlag()...)
	args = append(args, arm64ImageName, id, "sh", "-c", "uname -m; uname -r")
	// A foreground ctr run deletes the task once it has exited and exits non-zero if that
	// fails; --rm then deletes the container, logging (only) when that fails.
	r := h.ctr(args...)
	if r.code != 0 {
		t.Fatalf("run the arm64 container: %s", r)
	}
	if want := "aarch64\n" + release + "\n"; r.stdout != want {
		t.Fatalf("uname -m; uname -r printed %q, want %q (the arm64 guest kernel): %s", r.stdout, want, r)
	}
	if strings.Contains(r.stderr, "failed to cleanup") {
		t.Errorf("container not deleted cleanly: %s", r)
	}
	start := time.Now()
	if problems := h.d.checkLeaks(&h.base, leakTimeout); len(problems) > 0 {
		h.d.reap()
		t.Fatalf("leaked after the arm64 task was deleted (waited %s):\n  %s", leakTimeout, strings.Join(problems, "\n  "))
	}
	t.Logf("arm64 guest, kernel %s: ctr run --rm took %s, clean %s later",
		release, r.elapsed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// arm64Guest are the files an arm64 container needs on a host of any architecture.
type arm64Guest struct {
	kernel, rootfs string // _output/guest/arm64/
	busyboxDeb     string // busybox-static:arm64, for the image
}

// findArm64Guest finds what `make guest ARCH=arm64` provides, or says what is missing.
func findArm64Guest() (arm64Guest, error) {
	root, err := repoRoot()
	if err != nil {
		return arm64Guest{}, err
	}
	dir := filepath.Join(root, "_output", "guest", "arm64")
	g := arm64Guest{kernel: filepath.Join(dir, "kernel"), rootfs: filepath.Join(dir, "rootfs")}
	var missing []string
	for _, p := range []string{g.kernel, g.rootfs} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(root, "_output", "debs", "arm64", "busybox-static_*_arm64.deb"))
	switch len(debs) {
	case 0:
		missing = append(missing, "_output/debs/arm64/busybox-static_*_arm64.deb")
	case 1:
		g.busyboxDeb = debs[0]
	default:
		return arm64Guest{}, fmt.Errorf("more than one busybox-static .deb: %s", strings.Join(debs, ", "))
	}
	if _, err := lookPath("qemu-system-aarch64", suite.bin.path); err != nil {
		missing = append(missing, "qemu-system-aarch64 (Debian package qemu-system-arm)")
	}
	if len(missing) > 0 {
		return arm64Guest{}, fmt.Errorf("arm64 guest: missing %s: run `make guest ARCH=arm64`", strings.Join(missing, ", "))
	}
	return g, nil
}

// extractDebFile writes the regular file name of the .deb at debPath to dst, without installing
// the package.
func extractDebFile(debPath, name, dst string) error {
	f, err := os.Open(debPath)
	if err != nil {
		return err
	}
	defer f.Close()
	found := false
	err = deb.Walk(f, func(h *tar.Header, r io.Reader) error {
		if h.Name != name || h.Typeflag != tar.TypeReg {
			return nil
		}
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, r); err != nil {
			out.Close()
			return err
		}
		found = true
		if err := out.Close(); err != nil {
			return err
		}
		return deb.ErrStop
	})
	if err != nil {
		return fmt.Errorf("%s: %w", debPath, err)
	}
	if !found {
		return fmt.Errorf("%s: no regular file %s", debPath, name)
	}
	return nil
}

// kernelRelease reads the release (uname -r) from the banner of an uncompressed kernel image
// (guest.KernelRelease): "Linux version 6.12.117-vz (...)".
func kernelRelease(kernel string) (string, error) {
	b, err := os.ReadFile(kernel)
	if err != nil {
		return "", err
	}
	r, err := guest.KernelRelease(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", kernel, err)
	}
	return r, nil
}
