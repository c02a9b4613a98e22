package guest_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/guest"
	"github.com/vz-shim/containerd-shim-vz/guest/cpio"
	"github.com/vz-shim/containerd-shim-vz/transport"
	"github.com/vz-shim/containerd-shim-vz/vm"
)

// bootTimeout bounds one boot, from QEMU's start to the agent's answer.
// Under TCG on a busy 2-core machine the amd64 guest answers in about 10 s,
// the arm64 one in about 25 s.
const bootTimeout = 60 * time.Second

// qemuArch is how each guest architecture boots under QEMU with TCG.
var qemuArch = map[string]struct {
	binary, machine, console, pkg string
}{
	"amd64": {"qemu-system-x86_64", "q35,accel=tcg", "ttyS0", "qemu-system-x86"},
	"arm64": {"qemu-system-aarch64", "virt,accel=tcg", "ttyAMA0", "qemu-system-arm"},
}

// TestBoot boots the images of `make guest` (_output/guest/<arch>, or
// $VZ_GUEST_DIR/<arch>) in QEMU and asks the agent for its Info over the
// serial transport. Reaching the agent proves the image whole: /init runs,
// the root switch works, and the virtio modules load (virtio-serial is one).
// The host's architecture must be there (the test skips, loudly, without
// it); the other one is booted when it was built.
func TestBoot(t *testing.T) {
	for _, img := range guestImages(t) {
		arch := img.arch
		t.Run(img.name, func(t *testing.T) {
			q := qemuArch[arch]
			if _, err := exec.LookPath(q.binary); err != nil {
				t.Skipf("SKIPPING THE GUEST BOOT TEST: no %s (Debian package %s; `hack/guest.sh deps %s` installs it)", q.binary, q.pkg, arch)
			}
			boot(t, arch, filepath.Join(img.dir, "kernel"), img)
		})
	}
}

func other(arch string) string {
	if arch == "amd64" {
		return "arm64"
	}
	return "amd64"
}

func boot(t *testing.T, arch, kernel string, img guestImage) {
	image, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	release, err := guest.KernelRelease(image)
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	hostRelease := unix.ByteSliceToString(u.Release[:])
	if release == hostRelease {
		t.Fatalf("the guest kernel %s is the host's: the test could not tell them apart", release)
	}

	tmp := t.TempDir()
	sock := filepath.Join(tmp, "agent.sock")
	qmpSock := filepath.Join(tmp, "qmp.sock")
	consoleLog := filepath.Join(tmp, "console.log")
	q := qemuArch[arch]
	args := []string{
		"-M", q.machine, "-cpu", "max", "-m", "512",
		"-nodefaults", "-no-reboot", "-nographic",
		"-kernel", kernel,
		"-serial", "file:" + consoleLog,
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=agent,id=agentport",
		// Paused until the test is connected; QMP says when the guest
		// opens the agent's port.
		"-S", "-qmp", "unix:" + qmpSock + ",server=on,wait=off",
	}
	cmdline := []string{"console=" + q.console, "panic=-1", "vz.transport=serial", "vz.port=agent"}
	if img.rootDisk {
		// As vm/qemu attaches it: read-only, the first virtio-blk device.
		args = append(args,
			"-drive", "file="+img.boot+",format=raw,if=none,id=root,readonly=on",
			"-device", "virtio-blk-pci,drive=root,serial="+vm.RootDiskID)
		cmdline = append(cmdline, vm.RootDiskArgs()...)
	} else {
		args = append(args, "-initrd", img.boot)
	}
	args = append(args, "-append", strings.Join(cmdline, " "))
	cmd := exec.Command(q.binary, args...)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	// QEMU dies with the test process, however that ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	pid := cmd.Process.Pid
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(stop)
	// fail ends the test with what the guest and QEMU said.
	fail := func(format string, a ...any) {
		t.Helper()
		stop()
		console, _ := os.ReadFile(consoleLog)
		t.Fatalf("%s\nQEMU (%v): %s\nguest console:\n%s", fmt.Sprintf(format, a...), waitErr, qemuOut.Bytes(), tail(console, 4000))
	}

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()

	dial := func(path string) net.Conn {
		for {
			c, err := net.Dial("unix", path)
			if err == nil {
				return c
			}
			select {
			case <-exited:
				fail("QEMU exited before it made %s", path)
			case <-ctx.Done():
				fail("no socket %s from QEMU: %v", path, err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	mon, err := newQMP(dial(qmpSock))
	if err != nil {
		fail("QMP: %v", err)
	}
	defer mon.Close()
	// Connected before the guest runs: the agent fails if the host end
	// of its port is closed when it opens it.
	conn := dial(sock)
	if err := mon.execute("cont"); err != nil {
		fail("QMP cont: %v", err)
	}
	// Dialing only once the guest has opened its port keeps the stream's
	// SYN from waiting out yamux's open timeout while a slow guest boots.
	select {
	case <-mon.portOpen:
	case <-exited:
		fail("the VM stopped before the guest opened the agent's port")
	case <-ctx.Done():
		fail("the guest never opened the agent's port")
	}
	portOpen := time.Since(start)

	mux, err := transport.NewMux(ctx, conn, false)
	if err != nil {
		fail("mux: %v", err)
	}
	defer mux.Close()

	// Until the agent listens, the dial is refused.
	var c transport.Conn
	for c == nil {
		c, err = mux.Dial(ctx, agentapi.PortControl)
		if err == nil {
			break
		}
		if !errdefs.IsNotFound(err) {
			fail("dial the agent: %v", err)
		}
		select {
		case <-exited:
			fail("the VM stopped before the agent listened")
		case <-ctx.Done():
			fail("the agent never listened: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	client := ttrpc.NewClient(c)
	defer client.Close()
	info, err := agentapi.NewSystemClient(client).Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		fail("Info: %v", err)
	}
	t.Logf("%s guest: QEMU start to Info answered in %v (agent's port open after %v; agent %s, kernel %s)",
		arch, time.Since(start).Round(time.Millisecond), portOpen.Round(time.Millisecond), info.GetVersion(), info.GetKernelRelease())

	if !info.GetInit() {
		t.Error("Info.Init is false: the agent is not the guest's PID 1")
	}
	if got := info.GetKernelRelease(); got != release {
		t.Errorf("Info.KernelRelease = %q, want the guest kernel's %q (host: %q)", got, release, hostRelease)
	}
	console, _ := os.ReadFile(consoleLog)
	if bytes.Contains(console, []byte("loading kernel modules")) {
		t.Errorf("the agent failed to load kernel modules:\n%s", tail(console, 4000))
	}

	client.Close()
	mux.Close()
	stop()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU (pid %d) still exists after kill: %v", pid, err)
	}
}

// walkInitrd calls fn for each entry of a (gzip-compressed or plain) cpio archive.
func walkInitrd(t *testing.T, initrd string, fn func(h *cpio.Header, r io.Reader)) {
	t.Helper()
	f, err := os.Open(initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var cr io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			t.Fatalf("%s: %v", initrd, err)
		}
		cr = zr
	}
	r := cpio.NewReader(cr)
	for {
		h, err := r.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", initrd, err)
		}
		fn(h, r)
	}
}

// guestImage is a built guest: name is "<arch>" for ours, "<arch>/debian"
// for the fallback with Debian's kernel.
type guestImage struct {
	arch, name, dir string
	// boot is the initrd, or the root disk when rootDisk.
	boot     string
	rootDisk bool
}

// guestImages returns the images to test: the host architecture's always
// (skipping loudly when they were not built), the other one's when built.
func guestImages(t *testing.T) []guestImage {
	dir := os.Getenv("VZ_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join("..", "_output", "guest")
	}
	var out []guestImage
	for _, arch := range []string{runtime.GOARCH, other(runtime.GOARCH)} {
		// Ours (hack/kernel.sh), then the fallback of Debian's kernel.
		for _, flavour := range []string{"", "debian"} {
			d := filepath.Join(dir, arch, flavour)
			// Ours boots from a root disk, Debian's from an initramfs.
			img := guestImage{arch: arch, name: path.Join(arch, flavour), dir: d, boot: filepath.Join(d, "rootfs"), rootDisk: true}
			if flavour == "debian" {
				img.boot, img.rootDisk = filepath.Join(d, "initrd"), false
			}
			_, kerr := os.Stat(filepath.Join(d, "kernel"))
			_, ierr := os.Stat(img.boot)
			if missing := errors.Join(kerr, ierr); missing != nil {
				if arch == runtime.GOARCH {
					t.Skipf("SKIPPING: no %s guest image in %s (%v): run `make guest ARCH=%s`", arch, d, missing, arch)
				}
				// Optional: not a skip, which CI would count as a test not run.
				t.Logf("no %s guest image in %s (%v): not testing it; `make guest ARCH=%s` builds it", arch, d, missing, arch)
				continue
			}
			out = append(out, img)
		}
	}
	return out
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// qmp is a QEMU monitor connection that reports when the guest opens the
// virtserialport with id agentport.
type qmp struct {
	conn     net.Conn
	replies  chan qmpMessage
	portOpen chan struct{}
}

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Desc string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
	Data  struct {
		ID   string `json:"id"`
		Open bool   `json:"open"`
	} `json:"data"`
}

func newQMP(conn net.Conn) (*qmp, error) {
	m := &qmp{conn: conn, replies: make(chan qmpMessage, 1), portOpen: make(chan struct{})}
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	go func() {
		defer close(m.replies)
		opened := false
		for {
			var msg qmpMessage
			if err := dec.Decode(&msg); err != nil {
				return
			}
			switch {
			case msg.Event == "VSERPORT_CHANGE" && msg.Data.ID == "agentport" && msg.Data.Open && !opened:
				opened = true
				close(m.portOpen)
			case msg.Event == "":
				m.replies <- msg
			}
		}
	}()
	if err := m.execute("qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func (m *qmp) execute(command string) error {
	if _, err := fmt.Fprintf(m.conn, `{"execute":%q}`+"\n", command); err != nil {
		return err
	}
	msg, ok := <-m.replies
	switch {
	case !ok:
		return errors.New("QMP connection closed")
	case msg.Error != nil:
		return fmt.Errorf("%s: %s", command, msg.Error.Desc)
	}
	return nil
}

func (m *qmp) Close() error { return m.conn.Close() }
