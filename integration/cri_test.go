package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
	"github.com/vz-shim/containerd-shim-vz/network"
)

// pauseImage is the pods' sandbox image: busybox whose command sleeps until it is stopped
// (CRI finds it locally, pinned, with no registry).
const pauseImage = "localhost/vztest/pause:latest"

// criSubnet is the pods' CNI network of the CRI containerd (in the test's namespace).
const criSubnet = "10.96.0.0/24"

// startCRI starts a containerd of its own with CRI (the suite's runs without it), runtime
// handlers runc and vz (blockfile snapshots, the tree's guest), a bridge CNI network for pods,
// restrict_oom_score_adj (no CAP_SYS_RESOURCE here: shared/TESTING.md), and the test images
// imported into k8s.io. It is stopped, and checked for leaks, when the test ends. With a
// mirror, the CRI pulls registry.k8s.io's images from it (hosts.toml).
func startCRI(t *testing.T, mirror *registry) *daemon {
	t.Helper()
	if suite.skipAll != "" || suite.skipVZ != "" {
		t.Skip(skipPrefix + suite.skipAll + suite.skipVZ)
	}
	crictl := filepath.Join(filepath.Dir(filepath.Dir(suite.bin.cniDir)), "crictl", "bin", "crictl")
	if !isExecutable(crictl) {
		t.Fatalf("%s missing: make crictl", crictl)
	}
	dir, err := os.MkdirTemp(tempBase(), "vzcri-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		bin: suite.bin, dir: dir,
		root: filepath.Join(dir, "root"), state: filepath.Join(dir, "state"),
		address: filepath.Join(dir, "c.sock"), ttrpc: filepath.Join(dir, "c.sock.ttrpc"),
		socketDir: filepath.Join(dir, "s"), fifoDir: filepath.Join(dir, "fifo"), runcRoot: filepath.Join(dir, "runc"),
		config: filepath.Join(dir, "config.toml"), logPath: filepath.Join(dir, "containerd.log"),
		vzConfig: filepath.Join(dir, "vz-runtime.toml"), vzUser: filepath.Join(dir, "vz-runtime-user.toml"),
		namespace: "k8s.io", exited: make(chan struct{}),
	}
	for _, p := range []string{d.root, d.state, d.socketDir, d.fifoDir, filepath.Join(dir, "net.d"), filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	scratch := filepath.Join(dir, "scratch.ext4")
	if out, err := exec.Command(d.bin.mkfsExt4, "-q", "-F", scratch, scratchSize).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	for _, f := range []struct{ path, body string }{
		{d.vzConfig, vzRuntimeTOML(d.bin)},
		{d.vzUser, vzRuntimeTOML(d.bin)},
		{filepath.Join(dir, "net.d", "10-pods.conflist"), `{"cniVersion":"1.0.0","name":"pods","plugins":[
  {"type":"bridge","bridge":"cri0","isGateway":true,"ipMasq":true,
   "ipam":{"type":"host-local","ranges":[[{"subnet":"` + criSubnet + `"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}`},
		{d.config, criConfigTOML(d, scratch, mirror != nil)},
	} {
		if err := os.WriteFile(f.path, []byte(f.body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if mirror != nil {
		hosts := filepath.Join(dir, "certs.d", "registry.k8s.io")
		if err := os.MkdirAll(hosts, 0o700); err != nil {
			t.Fatal(err)
		}
		body := "server = \"https://registry.k8s.io\"\n[host.\"http://" + mirror.host + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
		if err := os.WriteFile(filepath.Join(hosts, "hosts.toml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if d.logf, err = os.Create(d.logPath); err != nil {
		t.Fatal(err)
	}
	if err := d.startAgain(); err != nil {
		d.dumpLog(os.Stderr, 0)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			var b strings.Builder
			d.dumpLog(&b, 0)
			t.Log(b.String())
		}
		if err := d.stop(); err != nil {
			t.Errorf("stopping the CRI containerd: %v", err)
		}
	})
	tar := filepath.Join(dir, "pause.tar")
	if err := testimage.WriteBusyboxCmd(tar, d.bin.busybox, pauseImage, []string{"sleep", "2147483647"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	if r, err := d.ctr(ctx, nil, "image", "import", "--snapshotter", snapshotter, tar); err != nil || r.code != 0 {
		t.Fatalf("import %s: %v %s", pauseImage, err, r)
	}
	if err := d.importBusybox(imageName, d.bin.busybox, goarch(), snapshotter); err != nil {
		t.Fatal(err)
	}
	return d
}

func criConfigTOML(d *daemon, scratch string, mirror bool) string {
	q := strconv.Quote
	registry := ""
	if mirror {
		registry = `
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ` + q(filepath.Join(d.dir, "certs.d"))
	}
	return `version = 3
root = ` + q(d.root) + `
state = ` + q(d.state) + `
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = ` + q(d.address) + `
[ttrpc]
  address = ` + q(d.ttrpc) + `
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
  [plugins.'io.containerd.transfer.v1.local']
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = "linux/` + goarch() + `"
      snapshotter = ` + q(snapshotter) + `
      differ = "walking"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = ` + q(snapshotter) + `
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = ` + q(pauseImage) + registry + `
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [` + q(d.bin.cniDir) + `]
      conf_dir = ` + q(filepath.Join(d.dir, "net.d")) + `
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        snapshotter = ` + q(snapshotter) + `
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vz]
        runtime_type = "io.containerd.vz.v1"
        snapshotter = ` + q(snapshotter) + `
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vz.options]
          ConfigPath = ` + q(d.vzConfig) + `
`
}

// crictl runs crictl against d and fails the test unless it exits 0.
func crictl(t *testing.T, d *daemon, args ...string) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(filepath.Dir(d.bin.cniDir)), "crictl", "bin", "crictl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"--runtime-endpoint", "unix://" + d.address, "--image-endpoint", "unix://" + d.address, "--timeout", "2m"}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Env = append(os.Environ(), "PATH="+d.bin.path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crictl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCRIPod: containerd's CRI runs a pod of two containers with the vz handler in one VM (one
// QEMU), as with runc: the second fetches from the first on localhost, both have the pod's
// address and hostname, they share an emptyDir and (a pod-level PID namespace) their
// processes; crictl exec, logs and stats work; stop and remove leave nothing.
func TestCRIPod(t *testing.T) {
	for _, handler := range []string{"runc", "vz"} {
		t.Run(handler, func(t *testing.T) {
			d := startCRI(t, nil)
			dir := t.TempDir()
			shared := t.TempDir()
			pod := writeJSON(t, filepath.Join(dir, "pod.json"), map[string]any{
				"metadata":      map[string]any{"name": "vzpod-" + handler, "namespace": "default", "uid": "uid-" + handler, "attempt": 1},
				"hostname":      "vzpod-host",
				"log_directory": filepath.Join(d.dir, "logs"),
				"linux": map[string]any{
					"security_context": map[string]any{
						"namespace_options": map[string]any{"pid": 0}, // POD: one PID namespace
					},
					// Pod-level resources: the VM is sized from them (256 MiB + the
					// shim's 128 MiB of overhead, 1.5 CPUs rounded up).
					"resources": map[string]any{"memory_limit_in_bytes": 256 << 20, "cpu_quota": 150000, "cpu_period": 100000},
				},
			})
			web := writeJSON(t, filepath.Join(dir, "web.json"), map[string]any{
				"metadata": map[string]any{"name": "web"},
				"image":    map[string]any{"image": imageName},
				"command":  []string{"sh", "-c", "echo web-started; mkdir -p /www && echo page-of-web > /www/index.html && exec httpd -f -p 8080 -h /www"},
				"mounts":   []map[string]any{{"container_path": "/shared", "host_path": shared}},
				"log_path": "web.log",
			})
			client := writeJSON(t, filepath.Join(dir, "client.json"), map[string]any{
				"metadata": map[string]any{"name": "client"},
				"image":    map[string]any{"image": imageName},
				"command":  []string{"sleep", "600"},
				"mounts":   []map[string]any{{"container_path": "/shared", "host_path": shared}},
				"log_path": "client.log",
			})
			base := d.takeBaseline()
			start := time.Now()
			podID := crictl(t, d, "runp", "--runtime", handler, pod)
			webID := crictl(t, d, "create", podID, web, pod)
			crictl(t, d, "start", webID)
			clientID := crictl(t, d, "create", podID, client, pod)
			crictl(t, d, "start", clientID)
			t.Logf("%s: runp + two containers started in %s", handler, time.Since(start).Round(time.Millisecond))

			if handler == "vz" {
				qemus := 0
				for _, p := range d.ownedProcs() {
					if p.isQEMU() {
						qemus++
					}
				}
				if qemus != 1 {
					t.Errorf("%d QEMU processes for the pod, want 1", qemus)
				}
				for _, p := range d.ownedProcs() {
					if p.isQEMU() && (!strings.Contains(p.cmdline, " -m 384M ") || !strings.Contains(p.cmdline, " -smp 2 ")) {
						t.Errorf("the pod's VM is not sized from the pod's resources (-m 384M -smp 2): %s", p.cmdline)
					}
				}
			}
			var got string
			for i := 0; i < 40; i++ {
				got = crictl(t, d, "exec", "-s", clientID, "sh", "-c", "wget -q -O - http://localhost:8080/ || true")
				if got == "page-of-web" {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if got != "page-of-web" {
				t.Errorf("client fetching localhost:8080: %q", got)
			}
			var podStatus struct {
				Status struct {
					Network struct {
						IP string `json:"ip"`
					} `json:"network"`
				} `json:"status"`
				Info struct {
					RuntimeSpec struct {
						Linux struct {
							Namespaces []struct{ Type, Path string } `json:"namespaces"`
						} `json:"linux"`
					} `json:"runtimeSpec"`
				} `json:"info"`
			}
			if err := json.Unmarshal([]byte(crictl(t, d, "inspectp", podID)), &podStatus); err != nil {
				t.Fatal(err)
			}
			ip := podStatus.Status.Network.IP
			// The pod's ports are on its network namespace's loopback, as a runc pod's are
			// (CRI's port forward dials them there).
			for _, ns := range podStatus.Info.RuntimeSpec.Linux.Namespaces {
				if ns.Type == "network" {
					if page := fetchInNetNS(t, ns.Path, "127.0.0.1:8080"); page != "page-of-web\n" {
						t.Errorf("the pod's loopback, port 8080: %q", page)
					}
				}
			}
			for _, id := range []string{webID, clientID} {
				if h := crictl(t, d, "exec", "-s", id, "hostname"); h != "vzpod-host" {
					t.Errorf("hostname in %s: %q", id, h)
				}
				if a := crictl(t, d, "exec", "-s", id, "ip", "-4", "-o", "addr", "show", "eth0"); ip == "" || !strings.Contains(a, "inet "+ip+"/") {
					t.Errorf("pod address %q in %s: %q", ip, id, a)
				}
			}
			crictl(t, d, "exec", "-s", webID, "sh", "-c", "echo from-web > /shared/note")
			if n := crictl(t, d, "exec", "-s", clientID, "cat", "/shared/note"); n != "from-web" {
				t.Errorf("emptyDir: client read %q", n)
			}
			if ps := crictl(t, d, "exec", "-s", clientID, "ps", "-o", "comm"); !strings.Contains(ps, "httpd") {
				t.Errorf("the pod's PID namespace: client sees\n%s", ps)
			}
			if handler == "vz" {
				mem := crictl(t, d, "exec", "-s", clientID, "cat", "/proc/meminfo")
				t.Logf("guest memory with two idle containers: %s", guestMemUsed(mem))
			}
			if l := crictl(t, d, "logs", webID); !strings.Contains(l, "web-started") {
				t.Errorf("crictl logs: %q", l)
			}
			if s := crictl(t, d, "stats", "-o", "json", webID); !strings.Contains(s, webID) {
				t.Errorf("crictl stats: %s", s)
			}
			for _, id := range []string{clientID, webID} {
				crictl(t, d, "stop", "-t", "2", id)
				crictl(t, d, "rm", id)
			}
			crictl(t, d, "stopp", podID)
			crictl(t, d, "rmp", podID)
			if problems := d.checkLeaks(&base, leakTimeout); len(problems) > 0 {
				d.reap()
				t.Errorf("left after the pod was removed:\n  %s", strings.Join(problems, "\n  "))
			}
		})
	}
}

func goarch() string { return runtime.GOARCH }

// guestMemUsed is MemTotal - MemAvailable of a /proc/meminfo, as text.
func guestMemUsed(meminfo string) string {
	kb := map[string]int{}
	for _, line := range strings.Split(meminfo, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			v, _ := strconv.Atoi(f[1])
			kb[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return fmt.Sprintf("%d MiB used of %d MiB (MemTotal - MemAvailable)", (kb["MemTotal"]-kb["MemAvailable"])/1024, kb["MemTotal"]/1024)
}

// fetchInNetNS GETs / from addr inside the network namespace at nsPath, retrying for a while
// (a port that just opened in a VM is forwarded once the agent reports it).
func fetchInNetNS(t *testing.T, nsPath, addr string) string {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		var c net.Conn
		// The socket is made on this thread, in the namespace, and stays there.
		if err = network.Do(nsPath, func() (err error) {
			c, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		}); err != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var resp *http.Response
		if _, err = io.WriteString(c, "GET / HTTP/1.0\r\nHost: "+addr+"\r\n\r\n"); err == nil {
			if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				c.Close()
				if err == nil {
					return string(b)
				}
			}
		}
		c.Close()
	}
	t.Errorf("GET / from %s in %s: %v", addr, nsPath, err)
	return ""
}
