package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestMemoryLimitAndOOM: --memory-limit sizes the VM (limit + the shim's
// overhead) and limits the container's cgroup; a process allocating past it
// is OOM-killed and containerd hears of it (TaskOOM).
func TestMemoryLimitAndOOM(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("oom")
		events := h.d.watchEvents(t, "/tasks/oom")
		h.ctrOK(h.runArgs(append(detached(), "--memory-limit", fmt.Sprint(256<<20)), id, trapSleep(143)...)...)
		if h.rt.vm {
			if q := h.findQEMU(id); !strings.Contains(q.cmdline, " -m 384M ") {
				t.Errorf("a 256 MiB limit should give a 256+128 MiB VM; QEMU runs with %q", q.cmdline)
			}
		}
		// dd's 300 MB buffer, filled from /dev/zero: past the limit, and
		// within the VM's memory so that the allocation itself succeeds.
		r := h.ctr("tasks", "exec", "--exec-id", "hog", id, "sh", "-c", "dd if=/dev/zero of=/dev/null bs=300M count=1 && echo survived")
		if r.code == 0 || strings.Contains(r.stdout, "survived") {
			t.Errorf("allocating 400 MB under a 256 MiB limit: %s", r)
		}
		select {
		case ev := <-events:
			t.Logf("containerd saw: %s", ev)
			if !strings.Contains(ev, id) {
				t.Errorf("OOM event for another container: %s", ev)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("no /tasks/oom event within 20s of the OOM kill")
		}
		h.killAndRemove(id)
	})
}

// TestUpdateCPU: a task's CPU limit changes live (containerd's Update; ctr
// 2.4 has no command for it) and shows in the container's cgroup.
func TestUpdateCPU(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		id := h.newID("update")
		flags := detached()
		if h.rt.vm {
			// ctr's spec mounts no cgroup filesystem; this one shows the
			// guest's cgroup2 hierarchy (no cgroup namespace).
			flags = append(flags, "--mount", "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro")
		}
		h.ctrOK(h.runArgs(flags, id, trapSleep(143)...)...)

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, task := h.loadTask(ctx, h.client(), id)
		quota, period := int64(50000), uint64(100000)
		if err := task.Update(ctx, containerd.WithResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}})); err != nil {
			t.Fatalf("update: %v", err)
		}

		cg := "/" + h.d.namespace + "/" + id
		var got string
		if h.rt.vm {
			got = strings.TrimSpace(h.ctrOK("tasks", "exec", "--exec-id", "cat", id, "cat", "/sys/fs/cgroup"+cg+"/cpu.max"))
			if got != "50000 100000" {
				t.Errorf("cpu.max in the guest after the update: %q, want \"50000 100000\"", got)
			}
		} else {
			got = readCgroupV1(t, "cpu", cg, "cpu.cfs_quota_us")
			if got != "50000" {
				t.Errorf("cpu.cfs_quota_us after the update: %q, want 50000", got)
			}
		}
		t.Logf("CPU limit after the update: %s", got)
		h.killAndRemove(id)
	})
}

func readCgroupV1(t *testing.T, controller, cg, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, cg, file))
	if err != nil {
		t.Skipf("SKIPPING: no cgroup v1 %s controller here: %v", controller, err)
	}
	return strings.TrimSpace(string(b))
}

// watchEvents runs `ctr events` and sends the lines of the given topic.
func (d *daemon) watchEvents(t *testing.T, topic string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := d.ctrCommand(ctx, "events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), topic) {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}
	}()
	// ctr events subscribes asynchronously; give it a moment.
	time.Sleep(200 * time.Millisecond)
	return lines
}
