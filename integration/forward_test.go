package integration

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestForwardPorts: with forward_ports = true a container's listening TCP port is reachable at
// the same port on the host's 127.0.0.1, through the shim and the agent (no NIC involved: the VM
// here has network = "none"); a port already taken on the host is a warning in the log, not a
// failed container; the forward ends with the task.
func TestForwardPorts(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	b, err := os.ReadFile(h.d.vzConfig)
	if err != nil {
		t.Fatal(err)
	}
	h.vzConfig = filepath.Join(h.d.dir, "vz-forward.toml")
	if err := os.WriteFile(h.vzConfig, append(b, "forward_ports = true\nnetwork = \"none\"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	// Taken on the host before the container listens on it.
	taken, err := net.Listen("tcp", "127.0.0.1:18091")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	id := h.newID("fwd")
	h.ctrOK(h.runArgs(detached(), id, "sh", "-c",
		"mkdir /www && echo forwarded-page > /www/index.html && httpd -p 18090 -h /www && exec httpd -f -p 18091 -h /www")...)
	got, err := httpGet("http://127.0.0.1:18090/")
	if err != nil || strings.TrimSpace(got) != "forwarded-page" {
		t.Fatalf("127.0.0.1:18090: %q, %v; want the container's page", got, err)
	}
	if info, ok := h.task(id); !ok || info.status != "RUNNING" {
		t.Errorf("task %s with a port taken on the host: %+v, want RUNNING", id, info)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(h.d.logSince(h.logStart), "cannot forward the container's port") {
		if time.Now().After(deadline) {
			t.Errorf("no warning in the log about port 18091, taken on the host")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.killAndRemove(id)
	if c, err := net.DialTimeout("tcp", "127.0.0.1:18090", time.Second); err == nil {
		c.Close()
		t.Error("127.0.0.1:18090 still answers after the task is gone")
	}
}
