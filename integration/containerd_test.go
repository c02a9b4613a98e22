package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

const (
	// ctrTimeout bounds every ctr command: a VM under TCG boots in a few seconds, a hang is a bug.
	ctrTimeout = 2 * time.Minute
	// scratchSize is the blockfile snapshotter's scratch image: every snapshot (the busybox layer,
	// each container's writable copy) is a sparse copy of it.
	scratchSize = "256M"
)

// daemon is a private containerd: everything it writes lives under dir.
type daemon struct {
	bin       binaries
	dir       string
	root      string // containerd's root
	state     string // containerd's state
	address   string // grpc socket
	ttrpc     string // ttrpc socket
	socketDir string // shim sockets (shim manager socket_dir)
	fifoDir   string // ctr --fifo-dir
	runcRoot  string // runc's state (ctr --runc-root)
	config    string
	logPath   string
	vzConfig  string // runtime options file of the vz runtime (the default network mode, cni)
	vzUser    string // the same with network = "user" (QEMU's NAT)
	namespace string
	snap      *snapDaemon // the vz snapshotter, when the snapshotter tests can run

	cmd      *exec.Cmd
	logf     *os.File
	exited   chan struct{} // closed when cmd has exited
	exitedAt time.Time     // set before exited is closed
}

// trouble says what is wrong with the suite's containerd, "" when it runs and has its socket:
// a test must not take a containerd that went away for its own failure.
func (d *daemon) trouble() string {
	select {
	case <-d.exited:
		return fmt.Sprintf("containerd (pid %d) exited at %s: %v", d.cmd.Process.Pid, d.exitedAt.Format("15:04:05.000"), d.cmd.ProcessState)
	default:
	}
	if _, err := os.Stat(d.address); err != nil {
		_, dirErr := os.Stat(d.dir)
		return fmt.Sprintf("containerd (pid %d) runs, but its socket is gone: %v (its directory: %v)", d.cmd.Process.Pid, err, dirErr)
	}
	return ""
}

// tempBase is where the temporary directory goes: the shim manager's socket_dir must be at most
// 42 characters long, so a long TMPDIR is not used.
func tempBase() string {
	if t := os.TempDir(); len(t) <= 16 {
		return t
	}
	return "/tmp"
}

// startDaemon writes a configuration and starts containerd with it; it returns once containerd
// answers. On error the returned daemon, if not nil, has a log worth showing and must be stopped.
func startDaemon(bin binaries) (*daemon, error) {
	dir, err := os.MkdirTemp(tempBase(), "vzit-")
	if err != nil {
		return nil, err
	}
	d := &daemon{
		bin:       bin,
		dir:       dir,
		root:      filepath.Join(dir, "root"),
		state:     filepath.Join(dir, "state"),
		address:   filepath.Join(dir, "containerd.sock"),
		ttrpc:     filepath.Join(dir, "containerd.sock.ttrpc"),
		socketDir: filepath.Join(dir, "s"),
		fifoDir:   filepath.Join(dir, "fifo"),
		runcRoot:  filepath.Join(dir, "runc"),
		config:    filepath.Join(dir, "config.toml"),
		logPath:   filepath.Join(dir, "containerd.log"),
		vzConfig:  filepath.Join(dir, "vz-runtime.toml"),
		vzUser:    filepath.Join(dir, "vz-runtime-user.toml"),
		// Unique per run: runc puts cgroups at /<namespace>/<id>.
		namespace: fmt.Sprintf("vztest-%d", os.Getpid()),
		exited:    make(chan struct{}),
	}
	for _, p := range []string{d.root, d.state, d.socketDir, d.fifoDir, d.runcRoot} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, err
		}
	}
	scratch := filepath.Join(dir, "scratch.ext4")
	if out, err := exec.Command(bin.mkfsExt4, "-q", "-F", scratch, scratchSize).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4 %s: %w: %s", scratch, err, out)
	}
	config := d.configTOML(scratch)
	if bin.vzSnapshotter != "" {
		// Started before containerd, which it serves as a proxy plugin.
		if d.snap, err = startSnapshotter(bin, dir, d.address); err != nil {
			return nil, err
		}
		example, err := os.ReadFile(bin.example)
		if err != nil {
			return d, err
		}
		if config, err = withVZSnapshotter(config, example, d.snap.address); err != nil {
			return d, err
		}
	}
	if err := os.WriteFile(d.config, []byte(config), 0o600); err != nil {
		return d, err
	}
	if err := os.WriteFile(d.vzConfig, []byte(vzRuntimeTOML(bin)), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(d.vzUser, []byte(vzRuntimeTOML(bin)+"network = \"user\"\n"), 0o600); err != nil {
		return nil, err
	}

	d.logf, err = os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	d.exited = make(chan struct{})
	if err := d.startAgain(); err != nil {
		return d, err
	}
	if d.snap != nil {
		// Not fatal to the suite: the snapshotter tests fail with this, the others run.
		d.snap.err = d.snap.waitReady(30 * time.Second)
	}
	return d, nil
}

func (d *daemon) configTOML(scratch string) string {
	q := strconv.Quote
	platform := "linux/" + runtime.GOARCH
	// The arm64 image of TestArm64Guest, on an amd64 host. The walking differ advertises only the
	// host's platform: unless named, containerd finds no differ for linux/arm64 and fails to load
	// the transfer service.
	arm64Unpack := ""
	if runtime.GOARCH != "arm64" {
		arm64Unpack = `    # linux/arm64 images (TestArm64Guest): the walking differ applies layers of any platform.
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = "linux/arm64"
      snapshotter = ` + q(snapshotter) + `
      differ = "walking"
`
	}
	// containerd's erofs snapshotter in block mode (an ext4 writable layer; TestErofsSnapshotter),
	// where the host kernel has erofs (the snapshotter needs it, and an unpack_config naming a
	// snapshotter that did not load breaks the transfer service). Its layers come from a content
	// cache: Debian 12's mkfs.erofs cannot convert tars, and the erofs differ does not load
	// without that; the walking differ is named and never applies an erofs layer.
	erofsConfig, erofsUnpack := "", ""
	if hostHasErofs() {
		erofsConfig = `  [plugins.'io.containerd.snapshotter.v1.erofs']
    default_size = "64M"
    layer_content_caches = [` + q(d.erofsCache()) + `]

`
		erofsUnpack = `    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = ` + q(platform) + `
      snapshotter = "erofs"
      differ = "walking"
`
	}
	return `version = 3
root = ` + q(d.root) + `
state = ` + q(d.state) + `
# Nothing outside the temporary directory: no CRI (it wants CNI and streams), no NRI socket.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = ` + q(d.address) + `

[ttrpc]
  address = ` + q(d.ttrpc) + `

# debug: shims get -debug, and their log lines land in containerd's log.
[debug]
  level = "debug"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = ` + q(filepath.Join(d.dir, "opt")) + `

  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = ` + q(d.socketDir) + `

  [plugins.'io.containerd.snapshotter.v1.blockfile']
    scratch_file = ` + q(scratch) + `
    fs_type = "ext4"

` + erofsConfig + `  [plugins.'io.containerd.transfer.v1.local']
    # differ named: with the vz differ configured, more than one would match the platform.
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = ` + q(platform) + `
      snapshotter = ` + q(snapshotter) + `
      differ = "walking"
` + erofsUnpack + `    # The directory snapshotter, for the tests of a directory rootfs.
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = ` + q(platform) + `
      snapshotter = "overlayfs"
      differ = "walking"
` + arm64Unpack
}

// hostHasErofs reports whether the host's kernel has erofs, which containerd's erofs
// snapshotter needs.
func hostHasErofs() bool {
	b, err := os.ReadFile("/proc/filesystems")
	return err == nil && slices.Contains(strings.Fields(string(b)), "erofs")
}

// erofsCache is the erofs snapshotter's layer content cache: <algorithm>/<xx>/<hex>.erofs blobs by
// layer diffID (containerd's internal/erofsutils.CacheBlobPath).
func (d *daemon) erofsCache() string { return filepath.Join(d.dir, "erofs-cache") }

// vzRuntimeTOML is the runtime options file given to the vz runtime (ctr --runtime-config-path):
// TCG because KVM does not work on these machines, and the guest files of this tree.
func vzRuntimeTOML(bin binaries) string {
	q := strconv.Quote
	return `accel = "tcg"
kernel = ` + q(bin.kernel) + `
rootfs = ` + q(bin.rootfs) + `
`
}

func (d *daemon) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("containerd exited during start-up: %v", d.cmd.ProcessState)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := d.ctr(ctx, nil, "version")
		cancel()
		if err == nil && r.code == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer within %s: %v %s", timeout, err, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends containerd (SIGTERM, then SIGKILL), then checks that it left nothing behind: no
// process, no mount, no loop device. The temporary directory is removed only when all is clean
// and -vztest.keep is not set.
func (d *daemon) stop() error {
	var errs []error
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(15 * time.Second):
			errs = append(errs, errors.New("containerd ignored SIGTERM for 15s"))
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	}
	if d.logf != nil {
		d.logf.Close()
	}
	if d.snap != nil {
		if err := d.snap.stop(); err != nil {
			errs = append(errs, err)
			d.snap.dumpLog(os.Stderr, 0)
		}
	}

	// Shims outlive containerd by design, so anything still here is a leak of a test.
	var problems []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		problems = d.hostLeaks()
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(problems) > 0 {
		errs = append(errs, fmt.Errorf("left behind after containerd stopped:\n  %s", strings.Join(problems, "\n  ")))
		d.reap()
	}
	removeCgroups(d.namespace)

	if len(errs) > 0 || *flagKeep {
		fmt.Fprintf(os.Stderr, "integration: kept %s (containerd log: %s)\n", d.dir, d.logPath)
		return errors.Join(errs...)
	}
	// Never RemoveAll across a mount point.
	if mounts, _ := mountsUnder(d.dir); len(mounts) > 0 {
		return fmt.Errorf("not removing %s: still mounted: %s", d.dir, strings.Join(mounts, ", "))
	}
	return os.RemoveAll(d.dir)
}

// importImage builds the busybox test image as an OCI layout tar and imports it into blockfile
// and overlayfs.
func (d *daemon) importImage(name string) error {
	return d.importBusybox(name, d.bin.busybox, runtime.GOARCH, snapshotter, "overlayfs")
}

// importBusybox builds a busybox image for linux/arch from the static busybox of that
// architecture and imports it, unpacked for each of the snapshotters.
func (d *daemon) importBusybox(name, busybox, arch string, snapshotters ...string) error {
	tarPath := filepath.Join(d.dir, "busybox-"+arch+"-oci.tar")
	if err := testimage.WriteBusyboxArch(tarPath, busybox, name, arch); err != nil {
		return fmt.Errorf("build test image: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	for _, sn := range snapshotters {
		r, err := d.ctr(ctx, nil, "image", "import", "--snapshotter", sn,
			"--platform", "linux/"+arch, tarPath)
		if err != nil || r.code != 0 {
			return fmt.Errorf("import %s into %s: %v: %s", name, sn, err, r)
		}
	}
	r, err := d.ctr(ctx, nil, "image", "ls", "-q")
	if err != nil || r.code != 0 {
		return fmt.Errorf("image ls: %v: %s", err, r)
	}
	for _, l := range strings.Fields(r.stdout) {
		if l == name {
			return nil
		}
	}
	return fmt.Errorf("import gave images %q, not %s", r.stdout, name)
}

// result is what a ctr command did.
type result struct {
	args           []string
	stdout, stderr string
	code           int // exit code; -1 when killed by a signal
	elapsed        time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("`ctr %s`: exit %d after %s\nstdout:\n%s\nstderr:\n%s",
		strings.Join(r.args, " "), r.code, r.elapsed.Round(time.Millisecond), indent(r.stdout), indent(r.stderr))
}

func indent(s string) string {
	if s == "" {
		return "    (empty)"
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// ctrCommand is ctr talking to this containerd in the test namespace.
func (d *daemon) ctrCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--address", d.address, "--namespace", d.namespace}, args...)
	cmd := exec.CommandContext(ctx, d.bin.ctr, full...)
	cmd.Env = append(os.Environ(), "PATH="+d.bin.path)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// ctr runs ctr with args; the error is only for a ctr that could not run or timed out, a
// non-zero exit is in the result.
func (d *daemon) ctr(ctx context.Context, stdin io.Reader, args ...string) (result, error) {
	cmd := d.ctrCommand(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = stdin
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	return finish(ctx, cmd, r, err)
}

// finish completes the result of a ctr command that has ended: its exit
// code, and an error only when ctr did not run to an exit status (ctx
// expired, or it could not start).
func finish(ctx context.Context, cmd *exec.Cmd, r result, err error) (result, error) {
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("ctr %s: %w", strings.Join(r.args, " "), ctx.Err())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return r, fmt.Errorf("ctr %s: %w", strings.Join(r.args, " "), err)
	}
	return r, nil
}

// logSize is the current length of containerd's log, a mark for dumpLog and logSince.
func (d *daemon) logSize() int64 { return fileSize(d.logPath) }

// logSince returns containerd's log from offset on.
func (d *daemon) logSince(offset int64) string { return fileSince(d.logPath, offset) }

// dumpLog writes containerd's log from offset on (its last maxLogLines lines) to w.
func (d *daemon) dumpLog(w io.Writer, offset int64) { dumpLog(w, "containerd", d.logPath, offset) }

// maxLogLines bounds how much of a daemon's log a failure shows.
const maxLogLines = 300

// fileSize is the length of a daemon's log file, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// fileSince returns the log file at path from offset on.
func fileSince(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// dumpLog writes the last maxLogLines lines of the log file at path, from offset on, to w.
func dumpLog(w io.Writer, name, path string, offset int64) {
	fmt.Fprintf(w, "---- %s log (%s) ----\n%s---- end of %s log ----\n", name, path, tailLines(fileSince(path, offset), maxLogLines), name)
}

func tailLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	prefix := ""
	if len(lines) > n {
		prefix = fmt.Sprintf("[... %d earlier lines ...]\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return ""
	}
	return prefix + strings.Join(lines, "\n") + "\n"
}
