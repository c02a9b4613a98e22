//go:build linux

package qemu

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// Real-VM tests boot the project's guest under TCG and need:
//   - qemu-system-x86_64 (Debian: qemu-system-x86), or qemu-system-aarch64
//     (qemu-system-arm) with VZ_TEST_ARCH=arm64,
//   - the guest files from `make guest`: _output/guest/<arch>/{kernel,rootfs} (or initrd),
//     or a directory holding both named by $VZ_GUEST_DIR.
// Without them they skip, saying so.

const (
	// bootTimeout bounds boot-to-agent; TCG on a busy 2-core machine
	// takes a few seconds.
	bootTimeout = 60 * time.Second
	helperEnv   = "VZ_QEMU_TEST_HELPER"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		runHelper(dir)
		return
	}
	os.Exit(m.Run())
}

// testArch is the guest architecture of the real-VM tests.
func testArch() string {
	if a := os.Getenv("VZ_TEST_ARCH"); a != "" {
		return a
	}
	return "amd64"
}

// guestDir holds the kernel and the root disk or initrd to boot.
func guestDir() string {
	if dir := os.Getenv("VZ_GUEST_DIR"); dir != "" {
		return dir
	}
	root, err := repoRoot()
	if err != nil {
		return ""
	}
	return filepath.Join(root, "_output", "guest", testArch())
}

// guestBoot is how the guest in dir boots: its kernel and its root disk
// (our kernel, make guest) or else its initrd (Debian's).
func guestBoot(dir string) (kernel, initrd, rootDisk string) {
	kernel = filepath.Join(dir, "kernel")
	if p := filepath.Join(dir, "rootfs"); fileExists(p) {
		return kernel, "", p
	}
	return kernel, filepath.Join(dir, "initrd"), ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// guestFiles returns the kernel and the root disk or initrd to boot, or
// skips the test.
func guestFiles(t *testing.T) (kernel, initrd, rootDisk string) {
	t.Helper()
	if bin := qemuBinary(testArch()); !haveBinary(bin) {
		t.Skipf("SKIP real-VM test: %s not installed (apt-get install qemu-system-x86 or qemu-system-arm)", bin)
	}
	kernel, initrd, rootDisk = guestBoot(guestDir())
	for _, p := range []string{kernel, initrd + rootDisk} {
		if !fileExists(p) {
			t.Skipf("SKIP real-VM test: no guest %s: run make guest (or set VZ_GUEST_DIR)", p)
		}
	}
	return kernel, initrd, rootDisk
}

func haveBinary(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found")
		}
		dir = parent
	}
}

// testConfig is a small amd64 TCG VM whose console log is in its state dir.
func testConfig(t *testing.T) vm.Config {
	kernel, initrd, rootDisk := guestFiles(t)
	state := t.TempDir()
	return vm.Config{
		ID:         strings.ReplaceAll(t.Name(), "/", "-"),
		Kernel:     kernel,
		Initrd:     initrd,
		RootDisk:   rootDisk,
		Arch:       testArch(),
		CPUs:       2,
		MemoryMiB:  512,
		ConsoleLog: filepath.Join(state, "console.log"),
		StateDir:   state,
		Accel:      "tcg",
	}
}

// startVM starts cfg; the test's cleanup stops it and dumps its console
// when the test failed.
func startVM(t *testing.T, cfg vm.Config) *Machine {
	t.Helper()
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if t.Failed() {
			t.Logf("console:\n%s", logTail(cfg.ConsoleLog, 4096))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m
}

// waitAgent dials the agent's control port until it answers.
func waitAgent(t *testing.T, m *Machine) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	start := time.Now()
	c, err := vm.DialRetry(ctx, m, agentapi.PortControl)
	if err != nil {
		t.Fatalf("agent: %v\nconsole:\n%s", err, logTail(m.cfg.ConsoleLog, 4096))
	}
	t.Logf("Start to agent: %v", time.Since(start).Round(time.Millisecond))
	return c
}

func info(ctx context.Context, c *ttrpc.Client, timeout time.Duration) (*agentapi.InfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return agentapi.NewSystemClient(c).Info(ctx, &agentapi.InfoRequest{})
}

func TestVMLifecycle(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "layer.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []vm.Disk{{ID: "layer-0123456789abcd", Path: disk, ReadOnly: true}}
	cfg.Shares = []vm.Share{{Tag: "share0", Path: dir, ReadOnly: true}}
	cfg.Network = true

	t0 := time.Now()
	m := startVM(t, cfg)
	t.Logf("Start: %v", time.Since(t0).Round(time.Millisecond))
	pid := m.Pid()
	if pid <= 0 {
		t.Fatalf("Pid %d", pid)
	}
	if b, err := os.ReadFile(filepath.Join(cfg.StateDir, PidFile)); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("pid file: %q, %v; want %d", b, err, pid)
	}
	ctx := context.Background()

	// QEMU took the disk read-only, with its serial.
	ret, err := m.qmp.execute(ctx, "query-block", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(ret); !strings.Contains(s, disk) || !strings.Contains(s, `"ro": true`) {
		t.Errorf("query-block: %s", s)
	}
	ret, err = m.qmp.execute(ctx, "qom-get", map[string]string{"path": "/machine/peripheral/disk0", "property": "serial"})
	if err != nil || string(ret) != `"layer-0123456789abcd"` {
		t.Errorf("disk serial: %s, %v", ret, err)
	}

	conn := waitAgent(t, m)
	t.Logf("boot to agent: %v", time.Since(t0).Round(time.Millisecond))
	client := ttrpc.NewClient(conn)
	defer client.Close()
	resp, err := info(ctx, client, 10*time.Second)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	var u unix.Utsname
	unix.Uname(&u)
	if resp.KernelRelease == "" || resp.KernelRelease == unix.ByteSliceToString(u.Release[:]) {
		t.Errorf("guest kernel release %q: not the guest's", resp.KernelRelease)
	}
	t.Logf("guest: %+v", resp)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := info(ctx, client, time.Second); err == nil {
		t.Error("Info answered while the VM was paused")
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := info(ctx, client, 10*time.Second); err != nil {
		t.Errorf("Info after Resume: %v", err)
	}

	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err after Stop: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("qemu pid %d still exists", pid)
	}
	assertOnlyConsole(t, cfg.StateDir)
	if err := m.Stop(sctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := m.Dial(ctx, agentapi.PortControl); err == nil {
		t.Error("Dial after Stop")
	}
	if err := m.Pause(ctx); err == nil {
		t.Error("Pause after Stop")
	}
}

func TestVMKilledFromOutside(t *testing.T) {
	m := startVM(t, testConfig(t))
	conn := waitAgent(t, m)
	defer conn.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(conn)
		readErr <- err
	}()

	if err := syscall.Kill(m.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case <-m.Done():
		t.Logf("Done %v after kill -9", time.Since(killed).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed 2s after kill -9")
	}
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err after kill -9: %v", err)
	}
	select {
	case err := <-readErr:
		// io.ReadAll returns nil on io.EOF: a dead VM must not look like
		// a clean end of stream.
		if err == nil || !errors.Is(err, transport.ErrPeerGone) {
			t.Errorf("read of an open stream: %v, want ErrPeerGone", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("read of an open stream still blocked 2s after kill -9")
	}
	if _, err := m.Dial(context.Background(), agentapi.PortControl); err == nil {
		t.Error("Dial after the VM died")
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("Stop after the VM died: %v", err)
	}
	assertOnlyConsole(t, m.cfg.StateDir)
}

// TestVMGuestPowerOff: the agent's Shutdown powers the guest off; that is a
// clean end (Err nil), and the way the shim should stop a VM before Stop.
func TestVMGuestPowerOff(t *testing.T) {
	m := startVM(t, testConfig(t))
	client := ttrpc.NewClient(waitAgent(t, m))
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	// The agent may power off before its answer leaves.
	if _, err := taskAPI.NewTTRPCTaskClient(client).Shutdown(ctx, &taskAPI.ShutdownRequest{}); err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-m.Done():
		t.Logf("powered off %v after Shutdown", time.Since(start).Round(time.Millisecond))
	case <-ctx.Done():
		t.Fatal("the guest did not power off")
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err after a guest power-off: %v", err)
	}
}

// TestVMLongPause pauses longer than a mux keepalive allows for (10s
// interval + 30s answer timeout): the host side sends no keepalive, so the
// control connection survives.
func TestVMLongPause(t *testing.T) {
	m := startVM(t, testConfig(t))
	client := ttrpc.NewClient(waitAgent(t, m))
	defer client.Close()
	ctx := context.Background()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
		t.Fatalf("the VM stopped while paused: %v", m.Err())
	case <-time.After(50 * time.Second):
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := info(ctx, client, 10*time.Second); err != nil {
		t.Errorf("Info after a 50s pause: %v", err)
	}
}

// TestVMGarbageBoot: a guest whose initrd or root disk is garbage dies (the kernel panics and
// panic=-1 reboots it, which ends QEMU), the machine says so well before any timeout, and the
// console's tail shows the panic.
func TestVMGarbageBoot(t *testing.T) {
	for _, what := range []string{"initrd", "root disk"} {
		t.Run(strings.ReplaceAll(what, " ", "-"), func(t *testing.T) {
			cfg := testConfig(t)
			garbage := filepath.Join(t.TempDir(), "garbage")
			b := make([]byte, 256<<10)
			rand.Read(b)
			if err := os.WriteFile(garbage, b, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.Initrd, cfg.RootDisk = garbage, ""
			if what == "root disk" {
				cfg.Initrd, cfg.RootDisk = "", garbage
			}
			m := startVM(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			_, err := vm.DialRetry(ctx, m, agentapi.PortControl)
			if err == nil {
				t.Fatalf("the agent answered from a garbage %s", what)
			}
			t.Logf("DialRetry failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if ctx.Err() != nil {
				t.Errorf("the dead guest was only noticed at the timeout")
			}
			if m.Err() == nil || !strings.Contains(m.Err().Error(), "rebooted") {
				t.Errorf("Err: %v", m.Err())
			}
			// What the shim adds to the error says why.
			if tail := logTail(cfg.ConsoleLog, 2048); !strings.Contains(tail, "Kernel panic") {
				t.Errorf("console tail does not show the panic:\n%s", tail)
			}
		})
	}
}

func TestVMStartFailure(t *testing.T) {
	cfg := testConfig(t)
	disk := filepath.Join(t.TempDir(), "gone.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []vm.Disk{{ID: "gone", Path: disk}}
	m, err := New(context.Background(), cfg, WithVsock(false))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(disk) // after validation: QEMU itself fails
	err = m.Start(context.Background())
	if err == nil {
		m.Stop(context.Background())
		t.Fatal("Start succeeded without its disk")
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), disk) || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("Start error does not carry QEMU's complaint: %v", err)
	}
	select {
	case <-m.Done():
	default:
		t.Error("Done not closed after a failed Start")
	}
	assertOnlyConsole(t, cfg.StateDir)
}

func TestCleanupRunningVM(t *testing.T) {
	m := startVM(t, testConfig(t))
	if err := Cleanup(m.cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Cleanup did not kill the VM")
	}
	if m.Err() == nil {
		t.Error("Err nil after the VM was killed by Cleanup")
	}
	assertOnlyConsole(t, m.cfg.StateDir)
}

// TestVMDiesWithShim: a shim killed with SIGKILL takes its VM with it
// (Pdeathsig), and Cleanup removes what is left.
func TestVMDiesWithShim(t *testing.T) {
	cfg := testConfig(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+cfg.StateDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Wait()
		t.Fatalf("helper: %v", err)
	}
	var hello struct {
		Pid int
		Err string
	}
	if err := json.Unmarshal([]byte(line), &hello); err != nil || hello.Err != "" {
		t.Fatalf("helper: %q %v", line, err)
	}
	if !alive(hello.Pid) {
		t.Fatalf("qemu pid %d not running", hello.Pid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for alive(hello.Pid) {
		if time.Now().After(deadline) {
			syscall.Kill(hello.Pid, syscall.SIGKILL)
			t.Fatalf("qemu pid %d outlived its shim", hello.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := Cleanup(cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	assertOnlyConsole(t, cfg.StateDir)
}

// runHelper is the "shim" of TestVMDiesWithShim: it starts a VM from a
// goroutine that then exits, as a request handler would, reports QEMU's pid
// and waits to be killed.
func runHelper(stateDir string) {
	kernel, initrd, rootDisk := guestBoot(guestDir())
	cfg := vm.Config{
		Kernel: kernel, Initrd: initrd, RootDisk: rootDisk,
		Arch: testArch(), CPUs: 1, MemoryMiB: 256, Accel: "tcg",
		StateDir: stateDir, ConsoleLog: filepath.Join(stateDir, "console.log"),
	}
	res := make(chan *Machine, 1)
	errc := make(chan error, 1)
	go func() {
		m, err := New(context.Background(), cfg, WithVsock(false))
		if err == nil {
			err = m.Start(context.Background())
		}
		if err != nil {
			errc <- err
			return
		}
		res <- m
	}()
	enc := json.NewEncoder(os.Stdout)
	select {
	case err := <-errc:
		enc.Encode(map[string]any{"Err": err.Error()})
		os.Exit(1)
	case m := <-res:
		enc.Encode(map[string]any{"Pid": m.Pid()})
	}
	select {}
}
