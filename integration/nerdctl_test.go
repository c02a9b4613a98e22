package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nerdctlTimeout bounds one nerdctl command (compose up of two VMs included).
const nerdctlTimeout = 4 * time.Minute

// nerdctl runs nerdctl against the suite's containerd, with its own data root, the CNI plugins
// of this tree and a CNI configuration directory of the test run; the vz runtime gets its
// options from the system-wide file (CONTAINERD_VZ_CONFIG in containerd's environment), as for
// any client that passes none. It fails the test if nerdctl could not run or timed out.
func (h *harness) nerdctl(args ...string) result {
	h.tb.Helper()
	if h.d.bin.nerdctl == "" {
		h.tb.Fatal("nerdctl not built (make nerdctl)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), nerdctlTimeout)
	defer cancel()
	full := append([]string{
		"--address", h.d.address, "--namespace", h.d.namespace,
		"--data-root", filepath.Join(h.d.dir, "nerdctl"),
		"--cni-path", h.d.bin.cniDir, "--cni-netconfpath", filepath.Join(h.d.dir, "cni-net.d"),
		"--snapshotter", snapshotter, "--cgroup-manager", "cgroupfs",
	}, args...)
	cmd := exec.CommandContext(ctx, h.d.bin.nerdctl, full...)
	cmd.Env = append(os.Environ(), "PATH="+h.d.bin.path)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: append([]string{"(nerdctl)"}, args...), stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	r, err = finish(ctx, cmd, r, err)
	if err != nil {
		h.tb.Fatalf("%v\n%s", err, r)
	}
	return r
}

func (h *harness) nerdctlOK(args ...string) string {
	h.tb.Helper()
	r := h.nerdctl(args...)
	if r.code != 0 {
		h.tb.Fatalf("unexpected exit status: %s", r)
	}
	return r.stdout
}

// nerdctlCleanup removes, when the test ends, the containers and networks named (whatever the
// test did with them), before the harness looks for leaks.
func (h *harness) nerdctlCleanup(containers, networks []string) {
	h.tb.Cleanup(func() {
		for _, c := range containers {
			h.nerdctl("rm", "-f", c)
		}
		for _, n := range networks {
			h.nerdctl("network", "rm", n)
		}
	})
}

// forEachNerdctlRuntime runs fn for the runc baseline and for vz.
func forEachNerdctlRuntime(t *testing.T, fn func(t *testing.T, h *harness)) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		if suite.bin.nerdctl == "" {
			t.Fatal("nerdctl not built (make nerdctl)")
		}
		fn(t, h)
	})
}

// TestNerdctlRun: nerdctl's defaults work with the vz runtime: a container on nerdctl's default
// bridge network (nerdctl's createRuntime hook runs CNI on the host in the VM's namespace, and
// its net.ipv4.ip_unprivileged_port_start sysctl goes to the VM) and one with --net none.
func TestNerdctlRun(t *testing.T) {
	forEachNerdctlRuntime(t, func(t *testing.T, h *harness) {
		rt := "--runtime=" + h.rt.runtime
		out := h.nerdctlOK("run", "--rm", rt, imageName, "sh", "-c", "echo hi; ip -4 -o addr show eth0; cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || lines[0] != "hi" || !strings.Contains(lines[1], "inet 10.4.0.") || lines[2] != "0" {
			t.Errorf("default network: %q, want hi, an address of nerdctl's bridge (10.4.0.0/24) and unprivileged ports from 0", out)
		}
		out = h.nerdctlOK("run", "--rm", "--net", "none", rt, imageName, "sh", "-c", "ls /sys/class/net | tr '\\n' ' '")
		if strings.TrimSpace(out) != "lo" {
			t.Errorf("--net none: interfaces %q, want lo only", out)
		}
	})
}

// TestNerdctlWeb: a detached web server with a published port and a bind-mounted directory is
// reached on the host's loopback and on its own address, nerdctl exec and logs work, a second
// container reaches it by address, and by name on a network of the user's; stop and rm -f end
// it all (the harness checks that nothing of the networks is left).
func TestNerdctlWeb(t *testing.T) {
	forEachNerdctlRuntime(t, func(t *testing.T, h *harness) {
		rt := "--runtime=" + h.rt.runtime
		port := map[bool]string{true: "18080", false: "18081"}[h.rt.vm]
		web, srv, netName := "web-"+h.rt.name, "srv-"+h.rt.name, "vznet-"+h.rt.name
		h.nerdctlCleanup([]string{web, srv}, []string{netName})
		www := t.TempDir()
		page := "page-from-" + h.rt.name
		if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(page+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		h.nerdctlOK("run", "-d", "--name", web, rt, "-p", "127.0.0.1:"+port+":80", "-v", www+":/www",
			imageName, "sh", "-c", "echo web-started; exec httpd -f -p 80 -h /www")

		if got, err := httpGet("http://127.0.0.1:" + port + "/"); err != nil || strings.TrimSpace(got) != page {
			t.Errorf("127.0.0.1:%s: %q, %v; want %q", port, got, err, page)
		}
		ip := strings.TrimSpace(h.nerdctlOK("inspect", "-f", "{{.NetworkSettings.IPAddress}}", web))
		if got, err := httpGet("http://" + ip + "/"); err != nil || strings.TrimSpace(got) != page {
			t.Errorf("the container's own address %q: %q, %v; want %q", ip, got, err, page)
		}
		if got := h.nerdctlOK("exec", web, "cat", "/www/index.html"); strings.TrimSpace(got) != page {
			t.Errorf("exec: %q", got)
		}
		if got := h.nerdctlOK("logs", web); !strings.Contains(got, "web-started") {
			t.Errorf("logs: %q, want web-started", got)
		}
		if got := h.nerdctlOK("run", "--rm", rt, imageName, "wget", "-q", "-O", "-", "http://"+ip+"/"); strings.TrimSpace(got) != page {
			t.Errorf("a second container to %s: %q", ip, got)
		}
		h.nerdctlOK("stop", web)
		h.nerdctlOK("rm", "-f", web)

		h.nerdctlOK("network", "create", netName)
		h.nerdctlOK("run", "-d", "--name", srv, "--net", netName, rt, "-v", www+":/www", imageName, "httpd", "-f", "-p", "80", "-h", "/www")
		if got := h.nerdctlOK("run", "--rm", "--net", netName, rt, imageName, "wget", "-q", "-O", "-", "http://"+srv+"/"); strings.TrimSpace(got) != page {
			t.Errorf("by name on %s: %q", netName, got)
		}
		h.nerdctlOK("rm", "-f", srv)
		h.nerdctlOK("network", "rm", netName)
	})
}

// TestNerdctlCompose: `nerdctl compose up -d` of two services, one fetching from the other by
// service name, then `compose down` leaves no container, namespace, tap, iptables rule or IP
// allocation (the harness checks).
func TestNerdctlCompose(t *testing.T) {
	forEachNerdctlRuntime(t, func(t *testing.T, h *harness) {
		dir := t.TempDir()
		project := "vzc-" + h.rt.name
		compose := fmt.Sprintf(`services:
  web:
    image: %[1]s
    runtime: %[2]s
    command: ["sh", "-c", "mkdir -p /www && echo page-of-web > /www/index.html && exec httpd -f -p 80 -h /www"]
  client:
    image: %[1]s
    runtime: %[2]s
    command: ["sh", "-c", "until wget -q -O /tmp/got http://web/; do sleep 0.5; done; exec sleep 600"]
`, imageName, h.rt.runtime)
		file := filepath.Join(dir, "compose.yaml")
		if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.nerdctl("compose", "-p", project, "-f", file, "down") })
		h.nerdctlOK("compose", "-p", project, "-f", file, "up", "-d")
		deadline := time.Now().Add(2 * time.Minute)
		for {
			r := h.nerdctl("compose", "-p", project, "-f", file, "exec", "-T", "client", "cat", "/tmp/got")
			if r.code == 0 && strings.TrimSpace(r.stdout) == "page-of-web" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client never fetched http://web/: %s", r)
			}
			time.Sleep(time.Second)
		}
		h.nerdctlOK("compose", "-p", project, "-f", file, "down")
		var ps []map[string]any
		out := h.nerdctlOK("ps", "-a", "--format", "json")
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var c map[string]any
			if line != "" && json.Unmarshal([]byte(line), &c) == nil {
				ps = append(ps, c)
			}
		}
		if len(ps) != 0 {
			t.Errorf("containers after compose down: %v", ps)
		}
	})
}
