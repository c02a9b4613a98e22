package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
	"github.com/vz-shim/containerd-shim-vz/api/stdio"
	"github.com/vz-shim/containerd-shim-vz/transport"
)

// The tests drive the real agent binary in host mode, through the same
// transport and handshake as the shim, with Debian's runc and a busybox
// rootfs.

var (
	agentBin string // built once by TestMain
	rootfs   string // a shared, read-only busybox root
	prereq   string // why the tests cannot run here, if they cannot
)

// applets is what the tests use of busybox inside containers.
var applets = []string{"sh", "cat", "echo", "sleep", "stty", "true", "false", "head", "dd", "wc", "kill", "trap", "yes", "ls", "sha256sum", "printf", "env", "id"}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "vz-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	switch {
	case os.Geteuid() != 0:
		prereq = "the agent tests need root (runc, mounts, cgroups)"
	case lookPath("runc") == "":
		prereq = "runc is not installed (make deps installs it)"
	case lookPath("busybox") == "":
		prereq = "busybox-static is not installed (make deps installs it)"
	}
	if prereq == "" {
		agentBin = filepath.Join(tmp, "vz-agent")
		out, err := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", agentBin, "github.com/vz-shim/containerd-shim-vz/cmd/vz-agent").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building the agent: %v\n%s", err, out)
			return 1
		}
		if rootfs, err = makeRootfs(tmp); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

func lookPath(name string) string {
	p, _ := exec.LookPath(name)
	return p
}

func makeRootfs(tmp string) (string, error) {
	root := filepath.Join(tmp, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	b, err := os.ReadFile(lookPath("busybox"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		return "", err
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return "", err
		}
	}
	return root, nil
}

func requirePrereqs(t testing.TB) {
	t.Helper()
	if prereq != "" {
		t.Skipf("SKIPPING AGENT TEST: %s", prereq)
	}
}

// testAgent is one agent process in host mode and a client to it.
type testAgent struct {
	t       testing.TB
	dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *bytes.Buffer
	tr      transport.Unix
	client  *ttrpc.Client
	tasks   taskAPI.TTRPCTaskService
	bundles agentapi.BundleService
	system  agentapi.SystemService
	events  agentapi.EventsClient
	seq     atomic.Int64
}

func startAgent(t testing.TB) *testAgent {
	t.Helper()
	requirePrereqs(t)
	dir := t.TempDir()
	a := &testAgent{t: t, dir: dir, tr: transport.Unix{Dir: filepath.Join(dir, "sock")}, log: &bytes.Buffer{}, exited: make(chan struct{})}
	a.cmd = exec.Command(agentBin, "-listen", a.tr.Dir, "-state", filepath.Join(dir, "state"))
	a.cmd.Stdout = &lockedWriter{w: a.log, mu: &sync.Mutex{}}
	a.cmd.Stderr = a.cmd.Stdout
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(a.stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn net.Conn
	for {
		c, err := a.tr.Dial(ctx, agentapi.PortControl)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("agent did not come up: %v\n%s", err, a.log)
		case <-a.exited:
			t.Fatalf("agent exited: %s", a.log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	a.client = ttrpc.NewClient(conn)
	a.tasks = taskAPI.NewTTRPCTaskClient(a.client)
	a.bundles = agentapi.NewBundleClient(a.client)
	a.system = agentapi.NewSystemClient(a.client)
	a.events = agentapi.NewEventsClient(a.client)
	return a
}

func (a *testAgent) stop() {
	if a.client != nil {
		a.client.Close()
	}
	select {
	case <-a.exited:
		return
	default:
	}
	a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		a.cmd.Process.Kill()
		<-a.exited
		a.t.Errorf("agent did not stop on SIGINT")
	}
	if a.t.Failed() {
		a.t.Logf("agent log:\n%s", a.log)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func ctxNS() context.Context {
	return namespaces.WithNamespace(context.Background(), "vztest")
}

// stream opens one stdio stream and returns its id for Create or Exec.
func (a *testAgent) stream() (string, transport.Conn) {
	a.t.Helper()
	id, conn, err := a.streamErr()
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { conn.Close() })
	return id, conn
}

func (a *testAgent) streamErr() (string, transport.Conn, error) {
	conn, err := a.tr.Dial(context.Background(), agentapi.PortStdio)
	if err != nil {
		return "", nil, err
	}
	id := fmt.Sprintf("s%d", a.seq.Add(1))
	if err := stdio.WriteHeader(conn, id); err != nil {
		conn.Close()
		return "", nil, err
	}
	if err := stdio.ReadAck(conn); err != nil {
		conn.Close()
		return "", nil, err
	}
	return id, conn, nil
}

// procIO is the host end of a process's stdio.
type procIO struct {
	stdin          transport.Conn
	stdout, stderr *captured
	ids            [3]string
}

type ioOpts struct {
	stdin, stdout, stderr, terminal bool
}

func (a *testAgent) procIO(o ioOpts) *procIO {
	p := &procIO{}
	if o.stdin {
		p.ids[0], p.stdin = a.stream()
	}
	if o.stdout {
		var c transport.Conn
		p.ids[1], c = a.stream()
		p.stdout = capture(c)
	}
	if o.stderr && !o.terminal {
		var c transport.Conn
		p.ids[2], c = a.stream()
		p.stderr = capture(c)
	}
	return p
}

// capture reads a stream to its end in the background.
type captured struct {
	done chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer // read it directly only after done
	err  error
}

func capture(c io.Reader) *captured {
	cp := &captured{done: make(chan struct{})}
	go func() {
		_, cp.err = io.Copy(&lockedWriter{w: &cp.buf, mu: &cp.mu}, c)
		close(cp.done)
	}()
	return cp
}

// snapshot is what arrived so far.
func (c *captured) snapshot() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

// wait returns everything the stream carried; the stream must end.
func (c *captured) wait(t testing.TB) string {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatal("stdio stream did not end")
	}
	if c.err != nil {
		t.Fatalf("stdio stream: %v", c.err)
	}
	return c.buf.String()
}

type specOpt func(*specs.Spec)

func withTerminal(s *specs.Spec) { s.Process.Terminal = true }

func withHostPidNS(s *specs.Spec) {
	var ns []specs.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type != specs.PIDNamespace {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
}

// spec is close to what containerd generates by default.
func spec(id string, args []string, opts ...specOpt) *specs.Spec {
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
				Effective: []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
				Permitted: []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: id,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=65536k"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/vz-agent-test/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// bundle delivers config.json as the shim will and returns the guest path.
func (a *testAgent) bundle(id string, s *specs.Spec) string {
	a.t.Helper()
	b, err := a.bundleErr(id, s)
	if err != nil {
		a.t.Fatal(err)
	}
	return b
}

func (a *testAgent) bundleRaw(id string, config []byte) string {
	a.t.Helper()
	b, err := a.bundleRawErr(id, config)
	if err != nil {
		a.t.Fatal(err)
	}
	return b
}

func (a *testAgent) bundleErr(id string, s *specs.Spec) (string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	return a.bundleRawErr(id, b)
}

func (a *testAgent) bundleRawErr(id string, config []byte) (string, error) {
	resp, err := a.bundles.Create(ctxNS(), &agentapi.CreateBundleRequest{
		Id:    id,
		Files: []*agentapi.BundleFile{{Path: "config.json", Data: config, Mode: 0o644}},
	})
	if err != nil {
		return "", errgrpc.ToNative(err)
	}
	return resp.Bundle, nil
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func rootfsMounts() []*types.Mount {
	return []*types.Mount{{Type: "bind", Source: rootfs, Options: []string{"rbind", "ro"}}}
}

// create makes a container (bundle, rootfs, stdio) without starting it.
func (a *testAgent) create(id string, s *specs.Spec, o ioOpts) *procIO {
	a.t.Helper()
	pio := a.procIO(o)
	_, err := a.tasks.Create(ctxNS(), &taskAPI.CreateTaskRequest{
		ID:       id,
		Bundle:   a.bundle(id, s),
		Rootfs:   rootfsMounts(),
		Terminal: o.terminal,
		Stdin:    pio.ids[0],
		Stdout:   pio.ids[1],
		Stderr:   pio.ids[2],
	})
	if err != nil {
		a.t.Fatalf("create %s: %v", id, errgrpc.ToNative(err))
	}
	return pio
}

func (a *testAgent) start(id, execID string) uint32 {
	a.t.Helper()
	resp, err := a.tasks.Start(ctxNS(), &taskAPI.StartRequest{ID: id, ExecID: execID})
	if err != nil {
		a.t.Fatalf("start %s/%s: %v", id, execID, errgrpc.ToNative(err))
	}
	return resp.Pid
}

func (a *testAgent) wait(id, execID string) uint32 {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(ctxNS(), 60*time.Second)
	defer cancel()
	resp, err := a.tasks.Wait(ctx, &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		a.t.Fatalf("wait %s/%s: %v", id, execID, errgrpc.ToNative(err))
	}
	return resp.ExitStatus
}

// remove deletes a stopped container and its bundle.
func (a *testAgent) remove(id string) {
	a.t.Helper()
	if _, err := a.tasks.Delete(ctxNS(), &taskAPI.DeleteRequest{ID: id}); err != nil {
		a.t.Fatalf("delete %s: %v", id, errgrpc.ToNative(err))
	}
	if _, err := a.bundles.Remove(ctxNS(), &agentapi.RemoveBundleRequest{Id: id}); err != nil {
		a.t.Fatalf("remove bundle %s: %v", id, errgrpc.ToNative(err))
	}
}

// run runs a container to its end and returns its exit status and output.
func (a *testAgent) run(id string, s *specs.Spec) (uint32, string, string) {
	a.t.Helper()
	pio := a.create(id, s, ioOpts{stdout: true, stderr: true})
	a.start(id, "")
	code := a.wait(id, "")
	stdout, stderr := pio.stdout.wait(a.t), pio.stderr.wait(a.t)
	a.remove(id)
	return code, stdout, stderr
}

// exec adds and starts an exec.
func (a *testAgent) exec(id, execID string, args []string, o ioOpts) *procIO {
	a.t.Helper()
	pio := a.procIO(o)
	p := spec(id, args).Process
	p.Terminal = o.terminal
	anyP, err := typeurl.MarshalAnyToProto(p)
	if err != nil {
		a.t.Fatal(err)
	}
	_, err = a.tasks.Exec(ctxNS(), &taskAPI.ExecProcessRequest{
		ID: id, ExecID: execID, Terminal: o.terminal,
		Stdin: pio.ids[0], Stdout: pio.ids[1], Stderr: pio.ids[2],
		Spec: anyP,
	})
	if err != nil {
		a.t.Fatalf("exec %s/%s: %v", id, execID, errgrpc.ToNative(err))
	}
	a.start(id, execID)
	return pio
}

// resources counts what the agent holds: open fds, mounts under its state
// directory, child processes and runc containers.
type resources struct {
	fds, mounts, children, runcState int
	fdTargets                        string // what the fds point at, for the failure message
}

func (r resources) same(o resources) bool {
	return r.fds == o.fds && r.mounts == o.mounts && r.children == o.children && r.runcState == o.runcState
}

func (a *testAgent) resources() resources {
	a.t.Helper()
	pid := a.cmd.Process.Pid
	var r resources
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		a.t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if l == "anon_inode:[pidfd]" {
			// Go's os.Process holds a pidfd of each runc command until
			// the garbage collector finalises it (the reaper, not
			// cmd.Wait, reaps runc): freed later, not leaked.
			continue
		}
		if i := strings.Index(l, ":["); i > 0 && !strings.HasPrefix(l, "anon_inode") {
			l = l[:i]
		}
		kinds[l]++
		r.fds++
	}
	r.fdTargets = fmt.Sprint(kinds)
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		a.t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, a.dir) {
			r.mounts++
		}
	}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	r.children = len(strings.Fields(string(children)))
	// Threads may each have children; count them all.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	r.children = 0
	for _, tk := range tasks {
		c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, tk.Name()))
		r.children += len(strings.Fields(string(c)))
	}
	states, _ := filepath.Glob(filepath.Join(a.dir, "state", "runc", "*", "*"))
	r.runcState = len(states)
	return r
}
