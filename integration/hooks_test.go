package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// hookScript records the state it reads on stdin in $1 and, when $2 is "net", does what
// nerdctl's createRuntime hook does with CNI: it gives the namespace of the state's pid an
// interface (a veth whose other end, with hookHost, stays in the test's namespace).
const hookScript = `#!/bin/sh
set -e
state=$(cat)
printf '%s' "$state" > "$1"
[ "$2" = net ] || exit 0
pid=$(printf '%s' "$state" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
ip link add vzhook0 type veth peer name eth0 netns "$pid"
ip addr add 10.98.0.1/24 dev vzhook0
ip link set vzhook0 up
nsenter -t "$pid" -n sh -c 'ip addr add 10.98.0.2/24 dev eth0 && ip link set eth0 up && ip route add default via 10.98.0.1'
`

// newVZContainer makes a container of the test image with the vz runtime through containerd's
// client (ctr cannot set hooks), with opts applied to its spec.
func (h *harness) newVZContainer(ctx context.Context, c *containerd.Client, id string, opts ...oci.SpecOpts) containerd.Container {
	h.tb.Helper()
	img, err := c.GetImage(ctx, imageName)
	if err != nil {
		h.tb.Fatal(err)
	}
	opts = append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)
	ctr, err := c.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(snapshotter),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime(vzRuntime, &runtimeoptions.Options{ConfigPath: h.d.vzConfig}),
		containerd.WithNewSpec(opts...),
	)
	if err != nil {
		h.tb.Fatal(err)
	}
	return ctr
}

func withHooks(hooks specs.Hooks) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		s.Hooks = &hooks
		return nil
	}
}

// TestHooksOnHost: prestart and createRuntime hooks run on the host before the guest boots,
// with the VMM's pid in the VM's network namespace, and what they make there reaches the guest
// (a hook that gives the namespace an interface, as nerdctl's does with CNI, gives the container
// that interface and address); poststart runs after start, poststop once the VM is gone. A
// createRuntime hook that fails fails the task's creation with its stderr and leaves nothing
// (the harness checks).
func TestHooksOnHost(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	dir := t.TempDir()
	script := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(script, []byte(hookScript), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := func(name string, extra ...string) specs.Hook {
		return specs.Hook{Path: script, Args: append([]string{"hook.sh", filepath.Join(dir, name)}, extra...),
			Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}}
	}
	c := h.client()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	id := h.newID("hooks")
	ctr := h.newVZContainer(ctx, c, id, oci.WithProcessArgs(webServer("page-hooks")...), withHooks(specs.Hooks{
		CreateRuntime: []specs.Hook{hook("createRuntime", "net")},
		Poststart:     []specs.Hook{hook("poststart")},
		Poststop:      []specs.Hook{hook("poststop")},
	}))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("creating the task: %v", err)
	}
	qemu := h.findQEMU(id)
	var st specs.State
	b, err := os.ReadFile(filepath.Join(dir, "createRuntime"))
	if err != nil || json.Unmarshal(b, &st) != nil {
		t.Fatalf("createRuntime hook state: %v %q", err, b)
	}
	if st.Pid != qemu.pid || st.ID != id || st.Status != specs.StateCreating || !strings.HasSuffix(st.Bundle, "/"+id) {
		t.Errorf("createRuntime hook state %+v: want pid %d (QEMU), id %s, status creating", st, qemu.pid, id)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if vmNS, _ := os.Readlink(filepath.Join("/proc", itoa(qemu.pid), "ns", "net")); vmNS == self || vmNS == "" {
		t.Errorf("QEMU's network namespace %q: want one of its own, not the test's %q", vmNS, self)
	}
	if _, err := os.Stat(filepath.Join(dir, "poststart")); err == nil {
		t.Errorf("poststart ran before start")
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "poststart")); err != nil {
		t.Errorf("poststart did not run at start: %v", err)
	}
	if got, err := httpGet("http://10.98.0.2/"); err != nil || strings.TrimSpace(got) != "page-hooks" {
		t.Errorf("the hook's interface: %q, %v; want the container's page at 10.98.0.2", got, err)
	}
	if err := task.Kill(ctx, 9); err != nil {
		t.Fatal(err)
	}
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	<-wait
	if _, err := os.Stat(filepath.Join(dir, "poststop")); err == nil {
		t.Errorf("poststop ran before the task was deleted")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "poststop")); err != nil {
		t.Errorf("poststop did not run at delete: %v", err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}

	// A hook that fails.
	id = h.newID("hookfail")
	ctr = h.newVZContainer(ctx, c, id, oci.WithProcessArgs("true"), withHooks(specs.Hooks{
		CreateRuntime: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "echo the-hook-says-no >&2; exit 3"}}},
	}))
	if _, err := ctr.NewTask(ctx, cio.NullIO); err == nil || !strings.Contains(err.Error(), "the-hook-says-no") {
		t.Errorf("creating a task whose createRuntime hook fails: %v, want the hook's stderr", err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
}
