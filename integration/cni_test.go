package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vzCNISubnet is the default network of the shim (network.DefaultConfList).
var vzCNISubnet = netip.MustParsePrefix("10.89.0.0/16")

// webServer is a command that serves page on port 80 with busybox httpd.
func webServer(page string) []string {
	return []string{"sh", "-c", "mkdir -p /www && echo " + page + " > /www/index.html && exec httpd -f -p 80 -h /www"}
}

// execOK runs cmd in task id and returns its standard output.
func (h *harness) execOK(id, execID string, cmd ...string) string {
	h.tb.Helper()
	args := append([]string{"tasks", "exec", "--exec-id", execID}, h.fifoFlag()...)
	return h.ctrOK(append(append(args, id), cmd...)...)
}

// guestIPv4 is the address of eth0 in task id's VM.
func (h *harness) guestIPv4(id string) netip.Addr {
	h.tb.Helper()
	out := h.execOK(id, "ip-"+id, "ip", "-4", "-o", "addr", "show", "eth0")
	for _, f := range strings.Fields(out) {
		if p, err := netip.ParsePrefix(f); err == nil {
			return p.Addr()
		}
	}
	h.tb.Fatalf("no IPv4 address on eth0 of %s:\n%s", id, out)
	return netip.Addr{}
}

// httpGet fetches url with a bounded number of tries (a server may still be starting).
func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	var err error
	for i := 0; i < 20; i++ {
		var resp *http.Response
		resp, err = c.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b), rerr
		}
		time.Sleep(250 * time.Millisecond)
	}
	return "", err
}

// TestNetworkCNI: with the default network mode every VM gets an address of its own on the
// shim's CNI bridge; the host reaches each, they reach each other, and nothing of the network is
// left once the tasks are gone (the harness checks namespaces, state, host-local's allocations,
// veths and iptables rules). vz only: a runc container of ctr run has no network but lo.
func TestNetworkCNI(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	a, b := h.newID("cni-a"), h.newID("cni-b")
	for _, id := range []string{a, b} {
		h.ctrOK(h.runArgs(detached(), id, webServer("page-"+id)...)...)
	}
	ipA, ipB := h.guestIPv4(a), h.guestIPv4(b)
	// While they run, their network is on the host: what the harness then finds gone.
	var allocated []string
	for _, f := range netFiles() {
		if !h.base.netFiles[f] && strings.HasPrefix(f, hostLocalDir+"/") {
			allocated = append(allocated, filepath.Base(f))
		}
	}
	if len(allocated) != 2 || !slices.Contains(allocated, ipA.String()) || !slices.Contains(allocated, ipB.String()) {
		t.Errorf("host-local allocations %v, want %s and %s", allocated, ipA, ipB)
	}
	if ipA == ipB || !vzCNISubnet.Contains(ipA) || !vzCNISubnet.Contains(ipB) {
		t.Fatalf("addresses %s and %s: want two different ones in %s", ipA, ipB, vzCNISubnet)
	}
	for id, ip := range map[string]netip.Addr{a: ipA, b: ipB} {
		got, err := httpGet("http://" + ip.String() + "/")
		if err != nil || strings.TrimSpace(got) != "page-"+id {
			t.Errorf("host to %s (%s): %q, %v; want page-%s", id, ip, got, err, id)
		}
	}
	if got := h.execOK(a, "fetch", "wget", "-q", "-O", "-", "http://"+ipB.String()+"/"); strings.TrimSpace(got) != "page-"+b {
		t.Errorf("%s to %s (%s): %q, want page-%s", a, b, ipB, got, b)
	}
	// The default route and masquerading: the bridge's gateway answers.
	if out := h.execOK(a, "route", "ip", "route", "show", "default"); !strings.Contains(out, "via 10.89.0.1 dev eth0") {
		t.Errorf("default route: %q, want via 10.89.0.1 dev eth0", out)
	}
	for _, id := range []string{a, b} {
		h.killAndRemove(id)
	}
}

// TestNetworkCNIShimKilled: a shim killed with SIGKILL leaves nothing of its VM's network once
// containerd has cleaned up after it with `shim delete` (the harness checks for leaks).
func TestNetworkCNIShimKilled(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	id := h.newID("cni-shimkill")
	h.ctrOK(h.runArgs(detached(), id, "sleep", "600")...)
	if ip := h.guestIPv4(id); !vzCNISubnet.Contains(ip) {
		t.Fatalf("address %s not in %s", ip, vzCNISubnet)
	}
	shim := h.findShim(id)
	if err := syscall.Kill(shim.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.deleteAfterDeadShim(id, 30*time.Second)
	h.removeContainer(id)
}

// deleteAfterDeadShim waits until containerd saw the shim of task id gone (the task stopped or
// gone) and deletes what is left of the task.
func (h *harness) deleteAfterDeadShim(id string, timeout time.Duration) {
	h.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info, ok := h.task(id)
		if !ok || info.status == "STOPPED" {
			break
		}
		if time.Now().After(deadline) {
			h.tb.Fatalf("task %s is %s %s after its shim went", id, info.status, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, ok := h.task(id); ok {
		if r := h.ctr("tasks", "delete", id); r.code != 0 {
			h.tb.Fatalf("delete task after its shim went: %s", r)
		}
	}
}

// findShim returns the vz shim process serving task id.
func (h *harness) findShim(id string) proc {
	h.tb.Helper()
	for _, p := range h.d.ownedProcs() {
		if strings.Contains(p.cmdline, "containerd-shim-vz-v1") && strings.Contains(p.cmdline+" ", " -id "+id+" ") {
			return p
		}
	}
	h.tb.Fatalf("no shim of task %s among %v", id, h.d.ownedProcs())
	return proc{}
}

// listenTCP listens on addr and serves page over HTTP until the test ends.
func listenTCP(t *testing.T, addr, page string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}
