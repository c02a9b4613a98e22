package integration

import (
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const (
	// skipPrefix starts every skip message of this package, so that a skipped run is easy to
	// spot (CI fails on skips it does not expect: hack/ci-allowed-skips.txt).
	skipPrefix = "SKIPPING INTEGRATION: "

	imageName   = "localhost/vztest/busybox:latest"
	snapshotter = "blockfile"

	runcRuntime = "io.containerd.runc.v2"
	vzRuntime   = "io.containerd.vz.v1"
)

var flagKeep = flag.Bool("vztest.keep", false, "keep the temporary directory (containerd root, state, config, log)")

// binaries are the programs the tests run, as absolute paths.
type binaries struct {
	containerd string // _output/containerd/bin/containerd
	ctr        string // _output/containerd/bin/ctr
	runcShim   string // _output/containerd/bin/containerd-shim-runc-v2
	runc       string // Debian's runc, found on PATH
	mkfsExt4   string
	busybox    string // a static busybox for the test image

	vzShim string // _output/bin/containerd-shim-vz-v1
	kernel string // _output/guest/<arch>/kernel
	rootfs string // _output/guest/<arch>/rootfs: the root disk it boots from
	// The fallback guest: Debian's kernel and an initrd with its modules.
	debianKernel, debianInitrd string // _output/guest/<arch>/debian/

	// The snapshotter tests: vzSnapshotter is empty when they cannot run (containerd then runs
	// without it).
	vzSnapshotter string // _output/bin/containerd-vz-snapshotter
	registry      string // _output/tools/bin/registry
	e2fsck        string
	debugfs       string
	example       string // config.toml.example, whose vz parts the test containerd runs with

	cniDir  string // _output/cni/bin
	nerdctl string // _output/nerdctl/bin/nerdctl, "" when not built

	// path is the PATH containerd runs with: our shim, the runc shim, runc.
	path string
}

// suite is what TestMain sets up once for every test of the package.
var suite struct {
	bin binaries
	// skipAll, when set, is why every test skips; skipVZ why the vz subtests skip.
	skipAll  string
	skipVZ   string
	skipSnap string // why the snapshotter tests skip

	d          *daemon
	hostKernel string // the host's uname -r
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	suite.skipAll, suite.skipVZ = discover(&suite.bin)
	if suite.skipAll != "" {
		banner(skipPrefix + suite.skipAll)
		return m.Run()
	}
	if code, ok := runInNetNS(); ok {
		return code
	}
	if err := loopbackUp(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: lo in the test's network namespace: %v\n", err)
		return 1
	}
	if suite.skipVZ != "" {
		banner(skipPrefix + "vz subtests: " + suite.skipVZ)
	}
	if suite.skipSnap = discoverSnapshotter(&suite.bin); suite.skipSnap != "" {
		banner(skipPrefix + "snapshotter tests: " + suite.skipSnap)
	}
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	suite.hostKernel = strings.TrimSpace(string(release))

	d, err := startDaemon(suite.bin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		if d != nil {
			d.dumpLog(os.Stderr, 0)
			if d.snap != nil {
				d.snap.dumpLog(os.Stderr, 0)
			}
			_ = d.stop()
		}
		return 1
	}
	suite.d = d
	if err := d.importImage(imageName); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		d.dumpLog(os.Stderr, 0)
		_ = d.stop()
		return 1
	}

	code := m.Run()

	if err := d.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: stopping containerd: %v\n", err)
		d.dumpLog(os.Stderr, 0)
		code = 1
	}
	return code
}

// banner prints msg where it cannot be missed in `go test` output.
func banner(msg string) {
	line := strings.Repeat("#", 100)
	fmt.Fprintf(os.Stderr, "\n%s\n## %s\n%s\n\n", line, msg, line)
}

// discover fills bin and says why all tests, or only the vz subtests, cannot run.
func discover(bin *binaries) (skipAll, skipVZ string) {
	if os.Geteuid() != 0 {
		return "not running as root (containerd, runc, mounts and VMs need root)", ""
	}
	if runtime.GOOS != "linux" {
		return "the integration tests run on Linux only", ""
	}
	root, err := repoRoot()
	if err != nil {
		return err.Error(), ""
	}

	cbin := filepath.Join(root, "_output", "containerd", "bin")
	bin.containerd = filepath.Join(cbin, "containerd")
	bin.ctr = filepath.Join(cbin, "ctr")
	bin.runcShim = filepath.Join(cbin, "containerd-shim-runc-v2")
	for _, p := range []string{bin.containerd, bin.ctr, bin.runcShim} {
		if !isExecutable(p) {
			return fmt.Sprintf("%s is missing: run `make containerd`", p), ""
		}
	}

	shimBin := filepath.Join(root, "_output", "bin")
	// containerd finds shims and runc on its PATH: ours first, then the runc shim, then the
	// system's (runc lives in /usr/sbin on Debian, which a non-login PATH may lack).
	bin.path = strings.Join([]string{shimBin, cbin, os.Getenv("PATH"),
		"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}, ":")
	if bin.runc, err = lookPath("runc", bin.path); err != nil {
		return "runc not found (apt-get install runc)", ""
	}
	if bin.mkfsExt4, err = lookPath("mkfs.ext4", bin.path); err != nil {
		return "mkfs.ext4 not found (apt-get install e2fsprogs)", ""
	}
	bin.busybox = "/bin/busybox"
	if err := checkStatic(bin.busybox); err != nil {
		return fmt.Sprintf("%v (apt-get install busybox-static)", err), ""
	}

	bin.vzShim = filepath.Join(shimBin, "containerd-shim-vz-v1")
	guest := filepath.Join(root, "_output", "guest", runtime.GOARCH)
	bin.kernel = filepath.Join(guest, "kernel")
	bin.rootfs = filepath.Join(guest, "rootfs")
	bin.debianKernel = filepath.Join(guest, "debian", "kernel")
	bin.debianInitrd = filepath.Join(guest, "debian", "initrd")
	var missing []string
	if !isExecutable(bin.vzShim) {
		missing = append(missing, bin.vzShim+" (make build)")
	}
	for _, p := range []string{bin.kernel, bin.rootfs, bin.debianKernel, bin.debianInitrd} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (make guest)")
		}
	}
	// The default network: the shim finds the plugins in _output/cni/bin; they need iptables.
	bin.cniDir = filepath.Join(root, "_output", "cni", "bin")
	if p := filepath.Join(root, "_output", "nerdctl", "bin", "nerdctl"); isExecutable(p) {
		bin.nerdctl = p
	}
	if !isExecutable(filepath.Join(bin.cniDir, "bridge")) {
		missing = append(missing, "the CNI plugins (make cni)")
	}
	if _, err := lookPath("iptables", bin.path); err != nil {
		missing = append(missing, "iptables (apt-get install iptables)")
	}
	if _, err := lookPath(qemuBinary(), bin.path); err != nil {
		missing = append(missing, qemuBinary()+" (apt-get install qemu-system)")
	}
	if len(missing) > 0 {
		skipVZ = "missing " + strings.Join(missing, ", ")
	}
	return "", skipVZ
}

// repoRoot is the directory holding go.mod, above the package directory go test runs in.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

func qemuBinary() string {
	if runtime.GOARCH == "arm64" {
		return "qemu-system-aarch64"
	}
	return "qemu-system-x86_64"
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func lookPath(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// checkStatic fails unless p is a statically linked ELF executable (no program interpreter).
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("static busybox: %w", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("static busybox: " + p + " is dynamically linked")
		}
	}
	return nil
}
