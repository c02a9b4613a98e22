package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// warmHarness is a vz harness whose runtime options turn warm start on,
// with a template directory of the test's own (empty: the first task makes
// the template).
func warmHarness(t *testing.T) (*harness, string) {
	t.Helper()
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	var templates string
	h.vzConfig, templates = warmRuntimeConfig(t, h.d)
	return h, templates
}

// warmRuntimeConfig writes the vz runtime's options with warm start on and
// a template directory of its own, which it returns too.
func warmRuntimeConfig(tb testing.TB, d *daemon) (config, templates string) {
	tb.Helper()
	templates = filepath.Join(tb.TempDir(), "templates")
	return runtimeConfigWith(tb, d, fmt.Sprintf("warm_start = true\ntemplate_dir = %q\n", templates)), templates
}

// runtimeConfigWith writes the daemon's vz runtime options with extra
// (TOML) after them, in a file of tb's.
func runtimeConfigWith(tb testing.TB, d *daemon, extra string) string {
	tb.Helper()
	return optionsWith(tb, d.vzConfig, extra)
}

// optionsWith writes the runtime options of the file base with extra
// (TOML) after them, in a file of tb's.
func optionsWith(tb testing.TB, base, extra string) string {
	tb.Helper()
	b, err := os.ReadFile(base)
	if err != nil {
		tb.Fatal(err)
	}
	config := filepath.Join(tb.TempDir(), "vz-runtime.toml")
	if err := os.WriteFile(config, append(b, extra...), 0o600); err != nil {
		tb.Fatal(err)
	}
	return config
}

// templateFiles lists the saved templates in dir.
func templateFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.state"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// warmProbe prints what must differ between two VMs restored from one
// template: random bytes, the kernel's random UUID, the clock, the
// address; and that the task's own devices (a rootfs disk, a share)
// reached the guest.
const warmProbe = `echo hello
cat /proc/sys/kernel/random/uuid
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo
date +%s
ip -4 -o addr show eth0 | awk '{print $4}'
cat /sys/class/net/eth0/address
hostname
cat /data/marker
exit 7`

type warmRun struct {
	uuid, random, addr, mac, hostname string
	clock                             int64
}

func parseWarmProbe(t *testing.T, r result) warmRun {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 7 || len(lines) != 8 || lines[0] != "hello" || lines[7] != "from the host" {
		t.Fatalf("want hello, uuid, random bytes, the time, an address, a MAC, the hostname, the share's marker and exit 7: %s", r)
	}
	clock, err := strconv.ParseInt(lines[3], 10, 64)
	if err != nil {
		t.Fatalf("date: %v: %s", err, r)
	}
	return warmRun{uuid: lines[1], random: lines[2], clock: clock, addr: lines[4], mac: lines[5], hostname: lines[6]}
}

var templateMadeRE = regexp.MustCompile(`warm start: template made`)

// TestWarmStart: with warm_start the first task makes the template and
// the next ones restore it; what a container sees is what the cold path
// gives (output, exit code, its rootfs, a bind mount, its own address on
// the CNI network, the hostname it asked for), and two restored VMs differ
// in their random numbers, their random UUIDs, their addresses and MACs,
// and have the host's clock.
func TestWarmStart(t *testing.T) {
	h, templates := warmHarness(t)
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "marker"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var runs []warmRun
	for i := range 3 {
		logStart := h.d.logSize()
		id := h.newID("warm")
		flags := append(bindFlag(share, "/data", "rbind:ro"), "--hostname", "warm-"+strconv.Itoa(i))
		r := h.ctr(h.runArgs(h.rmFlags(flags...), id, "sh", "-c", warmProbe)...)
		run := parseWarmProbe(t, r)
		if want := "warm-" + strconv.Itoa(i); run.hostname != want {
			t.Errorf("run %d: hostname %q, want %q", i, run.hostname, want)
		}
		log := h.d.logSince(logStart)
		made := templateMadeRE.MatchString(log)
		if made != (i == 0) {
			t.Errorf("run %d: template made %v, want %v (only the first run makes it)", i, made, i == 0)
		}
		if !strings.Contains(log, `phase="template ready"`) {
			t.Errorf("run %d: no template in the boot trace: not a warm start", i)
		}
		if now := time.Now().Unix(); run.clock < now-10 || run.clock > now+1 {
			t.Errorf("run %d: guest clock %d, host %d", i, run.clock, now)
		}
		t.Logf("run %d: %+v, ctr run --rm took %s, boot trace:\n%s", i, run, r.elapsed.Round(time.Millisecond), parseBootTraces(log).table())
		runs = append(runs, run)
	}
	if got := templateFiles(t, templates); len(got) != 1 {
		t.Errorf("templates %v, want one", got)
	}
	// Runs 1 and 2 were both restored from the template.
	a, b := runs[1], runs[2]
	if a.uuid == b.uuid || a.random == b.random {
		t.Errorf("two VMs restored from one template drew the same random numbers: %+v, %+v", a, b)
	}
	if a.addr == "" || a.addr == b.addr || a.mac == b.mac {
		t.Errorf("restored VMs' addresses %q and %q, MACs %q and %q: want their own", a.addr, b.addr, a.mac, b.mac)
	}
}

// TestWarmStartUserNetwork: with network = "user" (QEMU's NAT) a restored
// VM gets its NIC after the restore, with an address of its task's, and
// its lease in Setup: the container reaches the host, and two restored VMs
// have two MACs (the template has none to share).
func TestWarmStartUserNetwork(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	templates := filepath.Join(t.TempDir(), "templates")
	h.vzConfig = optionsWith(t, h.d.vzUser, fmt.Sprintf("warm_start = true\ntemplate_dir = %q\n", templates))
	const page = "hello over a restored VM's NIC"
	port := listenTCP(t, "127.0.0.1:0", page)
	script := fmt.Sprintf(`wget -q -O - http://%s:%d/; echo; ip -4 -o addr show eth0 | awk '{print $4}'; `+
		`cat /sys/class/net/eth0/address; grep -c nameserver /etc/resolv.conf`, vzNetGateway, port)
	var macs []string
	for i := range 3 {
		logStart := h.d.logSize()
		r := h.ctr(h.runArgs(h.rmFlags(), h.newID("warmnet"), "sh", "-c", script)...)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 4 {
			t.Fatalf("run %d: want the page, an address, a MAC and a nameserver count: %s", i, r)
		}
		if lines[0] != page {
			t.Errorf("run %d: wget http://%s:%d/ (the host's 127.0.0.1): got %q, want %q", i, vzNetGateway, port, lines[0], page)
		}
		if !strings.HasPrefix(lines[1], vzNetGuest+"/") {
			t.Errorf("run %d: eth0 has %q, want %s from DHCP", i, lines[1], vzNetGuest)
		}
		if lines[3] == "0" {
			t.Errorf("run %d: no nameserver in /etc/resolv.conf", i)
		}
		log := h.d.logSince(logStart)
		if i > 0 && (!strings.Contains(log, `phase="template ready"`) || templateMadeRE.MatchString(log)) {
			t.Errorf("run %d: not restored from the first run's template:\n%s", i, tailLines(log, 30))
		}
		macs = append(macs, lines[2])
		t.Logf("run %d: %s, ctr run --rm took %s", i, lines[2], r.elapsed.Round(time.Millisecond))
	}
	if macs[1] == macs[2] {
		t.Errorf("two restored VMs have one MAC %s", macs[1])
	}
	if got := templateFiles(t, templates); len(got) != 1 {
		t.Errorf("templates %v, want one", got)
	}
}

// TestWarmStartExec: a task restored from a template takes execs, and ends
// with its exit code on kill.
func TestWarmStartExec(t *testing.T) {
	h, _ := warmHarness(t)
	id := h.newID("warmexec")
	h.ctrOK(h.runArgs(detached(), id, trapSleep(143)...)...)
	h.waitProcs(id, 2, 60*time.Second)
	if out := h.execOK(id, "e1", "sh", "-c", "echo exec-ok; hostname"); !strings.HasPrefix(out, "exec-ok\n") {
		t.Errorf("exec: %q", out)
	}
	h.ctrOK("tasks", "kill", id)
	h.waitStatus(id, "STOPPED", 30*time.Second)
	if code := h.deleteTask(id); code != 143 {
		t.Errorf("exit code %d, want 143", code)
	}
	h.removeContainer(id)
}

// TestWarmStartCorruptTemplate: a template that does not restore is
// removed and the task boots cold and succeeds; the task after it makes a
// new template.
func TestWarmStartCorruptTemplate(t *testing.T) {
	h, templates := warmHarness(t)
	run := func() string {
		logStart := h.d.logSize()
		id := h.newID("warmbad")
		r := h.ctr(h.runArgs(h.rmFlags(), id, "echo", "hi")...)
		if r.code != 0 || r.stdout != "hi\n" {
			t.Fatalf("ctr run: %s", r)
		}
		return h.d.logSince(logStart)
	}
	run()
	files := templateFiles(t, templates)
	if len(files) != 1 {
		t.Fatalf("templates %v after the first run, want one", files)
	}
	if err := os.WriteFile(files[0], []byte("QEVM this is not a saved VM"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := run()
	if !strings.Contains(log, "the template failed; removing it") {
		t.Errorf("no warning that the template failed:\n%s", tailLines(log, 40))
	}
	if got := templateFiles(t, templates); len(got) != 0 {
		t.Errorf("templates %v after the corrupt one failed, want none", got)
	}
	if log := run(); !templateMadeRE.MatchString(log) {
		t.Error("the run after a failed template made no new one")
	}
}

// TestWarmStartParallel: ten tasks started at once with no template yet
// all run, and make exactly one template.
func TestWarmStartParallel(t *testing.T) {
	h, templates := warmHarness(t)
	const n = 10
	logStart := h.d.logSize()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = h.newID("warmpar")
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = h.ctr(h.runArgs(h.rmFlags(), id, "echo", "par-"+strconv.Itoa(i))...)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || r.stdout != "par-"+strconv.Itoa(i)+"\n" {
			t.Errorf("task %d: %s", i, r)
		}
	}
	log := h.d.logSince(logStart)
	if made := len(templateMadeRE.FindAllString(log, -1)); made != 1 {
		t.Errorf("%d templates made, want 1", made)
	}
	if got := templateFiles(t, templates); len(got) != 1 {
		t.Errorf("templates %v, want one", got)
	}
}
