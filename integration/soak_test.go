package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// soakResult is one soak's line of the table make soak prints.
type soakResult struct {
	cycles, failed     int
	leaks              []string
	maxShimRSSKiB      int64
	fdsBefore, maxFDs  int
	fdsAfter, shimsMax int
	took               time.Duration
}

func (r soakResult) String() string {
	return fmt.Sprintf("cycles %d, failed %d, leaks found %d, max shim RSS %.1f MiB, max shims at once %d, containerd fds %d before, %d max, %d after, %.2f s per cycle",
		r.cycles, r.failed, len(r.leaks), float64(r.maxShimRSSKiB)/1024, r.shimsMax, r.fdsBefore, r.maxFDs, r.fdsAfter, r.took.Seconds()/float64(max(r.cycles, 1)))
}

// soak runs n cycles of `ctr run --rm … echo hi` with the vz runtime, one after another,
// sampling the shims' RSS and containerd's open fds, then looks for leaks: processes, mounts,
// loop devices, containerd's and the shims' state and files, network namespaces, taps.
func soak(tb testing.TB, h *harness, n int) soakResult {
	tb.Helper()
	fds := h.d.openFiles
	// A first run outside the count: a warm start's template, containerd's lazily opened files.
	if r := h.ctr(h.runArgs(h.rmFlags(), h.newID("soak0"), "echo", "hi")...); r.code != 0 {
		tb.Fatalf("first run: %s", r)
	}
	h.ids = h.ids[:0]
	res := soakResult{cycles: n, fdsBefore: fds()}
	peaks := h.samplePeaks(50 * time.Millisecond)
	start := time.Now()
	for i := range n {
		r := h.ctr(h.runArgs(h.rmFlags(), h.newID("soak"), "echo", "hi")...)
		if r.code != 0 || r.stdout != "hi\n" {
			res.failed++
			tb.Errorf("cycle %d: %s", i, r)
			continue
		}
		h.ids = h.ids[:0] // only a failed cycle's id needs the harness's cleanup
	}
	res.took = time.Since(start)
	res.maxShimRSSKiB, res.maxFDs, res.shimsMax = peaks.stop()
	res.leaks = h.d.checkLeaks(&h.base, leakTimeout)
	res.fdsAfter = fds()
	return res
}

// peaks samples, until stop, the largest RSS and peak RSS (VmHWM, which catches a burst between
// two samples) of the harness's shims, the most files containerd holds (fds) and the most shims
// at once.
type peaks struct {
	mu                     sync.Mutex
	shimRSSKiB, shimHWMKiB int64
	fds, shims             int
	stopped, finished      chan struct{}
}

// openFiles is how many files containerd holds.
func (d *daemon) openFiles() int {
	e, _ := os.ReadDir("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd")
	return len(e)
}

func (h *harness) samplePeaks(every time.Duration) *peaks {
	p := &peaks{stopped: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(p.finished)
		for {
			select {
			case <-p.stopped:
				return
			case <-time.After(every):
			}
			shims := 0
			var rss, hwm int64
			for _, pr := range h.d.ownedProcs() {
				if strings.Contains(pr.cmdline, "containerd-shim-vz-v1") {
					shims++
					v, _ := statusFields(pr.pid, "VmRSS", "VmHWM")
					rss, hwm = max(rss, v[0]), max(hwm, v[1])
				}
			}
			f := h.d.openFiles()
			p.mu.Lock()
			p.shimRSSKiB, p.shimHWMKiB = max(p.shimRSSKiB, rss), max(p.shimHWMKiB, hwm)
			p.fds, p.shims = max(p.fds, f), max(p.shims, shims)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *peaks) stop() (shimRSSKiB int64, fds, shims int) {
	close(p.stopped)
	<-p.finished
	return p.shimRSSKiB, p.fds, p.shims
}

// statusKiB reads a KiB field of /proc/<pid>/status; 0 when the process is gone.
func statusKiB(pid int, field string) int64 {
	v, _ := statusFields(pid, field)
	return v[0]
}

// statusFields reads the numbers of fields of /proc/<pid>/status ("VmRSS", "PPid") in one read,
// in the order asked; each is 0 on error.
func statusFields(pid int, fields ...string) ([]int64, error) {
	vals := make([]int64, len(fields))
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	b, err := os.ReadFile(path)
	if err != nil {
		return vals, err
	}
	lines := strings.Split(string(b), "\n")
	for i, field := range fields {
		j := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, field+":") })
		if j < 0 {
			return vals, fmt.Errorf("%s has no %s", path, field)
		}
		f := strings.Fields(strings.TrimPrefix(lines[j], field+":"))
		if len(f) == 0 {
			return vals, fmt.Errorf("%s: %q", path, lines[j])
		}
		if vals[i], err = strconv.ParseInt(f[0], 10, 64); err != nil {
			return vals, fmt.Errorf("%s: %q: %w", path, lines[j], err)
		}
	}
	return vals, nil
}

// soakCycles is VZ_SOAK_CYCLES, else def.
func soakCycles(def int) int {
	if n, err := strconv.Atoi(os.Getenv("VZ_SOAK_CYCLES")); err == nil && n > 0 {
		return n
	}
	return def
}

// TestSoakShort: the short soak of make test: 20 create/start/delete cycles leave nothing behind
// (no shim, VMM or other process, mount, loop device, state, netns or tap: checkLeaks), and
// containerd holds no more files than before them. (A cycle's shim may still be exiting while the
// next one's starts: "max shims at once" is 2.)
func TestSoakShort(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	r := soak(t, h, soakCycles(20))
	t.Logf("soak: %s", r)
	if len(r.leaks) > 0 {
		t.Errorf("leaked after %d cycles:\n  %s", r.cycles, strings.Join(r.leaks, "\n  "))
	}
	if r.fdsAfter > r.fdsBefore {
		t.Errorf("containerd holds %d files after %d cycles, %d before", r.fdsAfter, r.cycles, r.fdsBefore)
	}
}

// BenchmarkSoak is make soak's long form: VZ_SOAK_CYCLES (200) cycles, and the table.
func BenchmarkSoak(b *testing.B) {
	if os.Getenv("VZ_SOAK_CYCLES") == "" {
		b.Skip("!!! make soak runs it (VZ_SOAK_CYCLES set)")
	}
	h := newHarness(b, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	var r soakResult
	for b.Loop() {
		r = soak(b, h, soakCycles(200))
	}
	fmt.Printf("soak (ctr run --rm … echo hi, vz):\n%-8s %-7s %-12s %-14s %-18s %-10s\n", "cycles", "failed", "leaks found", "max shim RSS", "max containerd fds", "s/cycle")
	fmt.Printf("%-8d %-7d %-12d %-14s %-18d %-10.2f\n", r.cycles, r.failed, len(r.leaks), fmt.Sprintf("%.1f MiB", float64(r.maxShimRSSKiB)/1024), r.maxFDs, r.took.Seconds()/float64(max(r.cycles, 1)))
	for _, l := range r.leaks {
		fmt.Println("  leak:", l)
	}
	if len(r.leaks) > 0 || r.failed > 0 || r.fdsAfter > r.fdsBefore {
		b.Errorf("soak: %s", r)
	}
}

// manyResult is what manyVMs measured.
type manyResult struct {
	vms, failed   int
	startAll      time.Duration
	qemuRSSKiB    []int64 // per VM, idle
	guestAvailKiB []int64 // MemAvailable in each guest
}

func (r manyResult) String() string {
	return fmt.Sprintf("%d VMs at once (%d failed): all started in %.1f s; idle QEMU RSS per VM %s; guest MemAvailable %s",
		r.vms, r.failed, r.startAll.Seconds(), spread(r.qemuRSSKiB), spread(r.guestAvailKiB))
}

// spread is "min–max MiB (mean)" of KiB values.
func spread(kib []int64) string {
	if len(kib) == 0 {
		return "-"
	}
	lo, hi, sum := kib[0], kib[0], int64(0)
	for _, v := range kib {
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	return fmt.Sprintf("%.0f–%.0f MiB (mean %.0f)", float64(lo)/1024, float64(hi)/1024, float64(sum)/float64(len(kib))/1024)
}

// manyVMs starts n tasks at once (`ctr run -d … sleep`), each in its VM; when all run it asks
// each for its guest's available memory (an exec) and reads each QEMU's RSS, then kills and
// deletes them all.
func manyVMs(tb testing.TB, h *harness, n int) manyResult {
	tb.Helper()
	res := manyResult{vms: n}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = h.newID("many")
	}
	runs := make([]result, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = h.ctr(h.runArgs(detached(), id, "sleep", "600")...)
		}()
	}
	wg.Wait()
	res.startAll = time.Since(start)
	var up []string
	for i, r := range runs {
		if r.code != 0 {
			res.failed++
			tb.Errorf("VM %d of %d did not start: %s", i+1, n, r)
			continue
		}
		up = append(up, ids[i])
	}
	for _, id := range up {
		out := h.ctr("tasks", "exec", "--exec-id", "mem", id, "sh", "-c", "grep MemAvailable /proc/meminfo")
		if f := strings.Fields(out.stdout); out.code == 0 && len(f) >= 2 {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				res.guestAvailKiB = append(res.guestAvailKiB, v)
			}
		} else {
			res.failed++
			tb.Errorf("exec in %s: %s", id, out)
		}
		res.qemuRSSKiB = append(res.qemuRSSKiB, statusKiB(h.findQEMU(id).pid, "VmRSS"))
	}
	for _, id := range up {
		h.killAndRemove(id)
	}
	return res
}

// TestManyVMsShort: the short form of make test: 6 VMs start at once, all run and answer, and
// all go without a trace.
func TestManyVMsShort(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	r := manyVMs(t, h, manyVMCount(6))
	t.Logf("%s", r)
}

// manyVMCount is VZ_MANY_VMS, else def.
func manyVMCount(def int) int {
	if n, err := strconv.Atoi(os.Getenv("VZ_MANY_VMS")); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkManyVMs is make soak's: VZ_MANY_VMS (20) VMs at once on this machine.
func BenchmarkManyVMs(b *testing.B) {
	if os.Getenv("VZ_SOAK_CYCLES") == "" && os.Getenv("VZ_MANY_VMS") == "" {
		b.Skip("!!! make soak runs it (VZ_SOAK_CYCLES or VZ_MANY_VMS set)")
	}
	h := newHarness(b, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	var r manyResult
	for b.Loop() {
		r = manyVMs(b, h, manyVMCount(20))
	}
	fmt.Println(r)
}

// stormResult is what storm measured.
type stormResult struct {
	workers, cycles, failed int
	leaks                   []string
	maxShimRSSKiB           int64
	fdsBefore, maxFDs       int
	fdsAfter                int
	took                    time.Duration
}

func (r stormResult) String() string {
	return fmt.Sprintf("%d workers for %s: %d cycles (run -d, exec, kill, delete), %d failed, leaks found %d, max shim RSS %.1f MiB, containerd fds %d before, %d max, %d after",
		r.workers, r.took.Round(time.Second), r.cycles, r.failed, len(r.leaks), float64(r.maxShimRSSKiB)/1024, r.fdsBefore, r.maxFDs, r.fdsAfter)
}

// storm runs workers loops side by side for d, each cycle `ctr run -d … sleep`, an exec that must
// answer, SIGKILL, and the deletes, then looks for leaks as soak does.
func storm(tb testing.TB, h *harness, workers int, d time.Duration) stormResult {
	tb.Helper()
	fds := h.d.openFiles
	res := stormResult{workers: workers, fdsBefore: fds()}
	peaks := h.samplePeaks(100 * time.Millisecond)
	var mu sync.Mutex
	ctr := func(args ...string) (result, error) {
		ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
		defer cancel()
		return h.d.ctr(ctx, nil, args...)
	}
	fail := func(format string, args ...any) {
		mu.Lock()
		res.failed++
		mu.Unlock()
		tb.Errorf(format, args...)
	}
	idCounter++
	run := idCounter
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A containerd that went away fails the test once (the harness), not every cycle.
			for i := 0; time.Now().Before(deadline) && h.d.trouble() == ""; i++ {
				id := fmt.Sprintf("storm-%d-%d-%d", run, w, i)
				if r, err := ctr(h.runArgs(detached(), id, "sleep", "600")...); err != nil || r.code != 0 {
					fail("worker %d: run %s: %v %s", w, id, err, r)
					ctr("containers", "delete", id)
					continue
				}
				if r, err := ctr("tasks", "exec", "--exec-id", "storm", id, "echo", id); err != nil || r.code != 0 || strings.TrimSpace(r.stdout) != id {
					fail("worker %d: exec in %s: %v %s", w, id, err, r)
				}
				if r, err := ctr("tasks", "kill", "--signal", "SIGKILL", id); err != nil || r.code != 0 {
					fail("worker %d: kill %s: %v %s", w, id, err, r)
				}
				// delete --force waits for the exit the kill brings.
				if r, err := ctr("tasks", "delete", "--force", id); err != nil || r.code != 0 {
					fail("worker %d: delete %s: %v %s", w, id, err, r)
				}
				if r, err := ctr("containers", "delete", id); err != nil || r.code != 0 {
					fail("worker %d: delete container %s: %v %s", w, id, err, r)
				}
				mu.Lock()
				res.cycles++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.took = time.Since(start)
	res.maxShimRSSKiB, res.maxFDs, _ = peaks.stop()
	res.leaks = h.d.checkLeaks(&h.base, leakTimeout)
	res.fdsAfter = fds()
	return res
}

// stormTime is VZ_STORM, else def.
func stormTime(def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv("VZ_STORM")); err == nil && d > 0 {
		return d
	}
	return def
}

// TestStormShort: make test's short storm: 8 workers of run, exec, kill and delete side by side
// for 40 s; every call answers, and nothing is left.
func TestStormShort(t *testing.T) {
	h := newHarness(t, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	r := storm(t, h, 8, stormTime(40*time.Second))
	t.Logf("storm: %s", r)
	if len(r.leaks) > 0 {
		t.Errorf("leaked after the storm:\n  %s", strings.Join(r.leaks, "\n  "))
	}
	if r.cycles == 0 {
		t.Error("no cycle finished")
	}
	if r.fdsAfter > r.fdsBefore {
		t.Errorf("containerd holds %d files after the storm, %d before", r.fdsAfter, r.fdsBefore)
	}
}

// BenchmarkStorm is make soak's storm: 8 workers for VZ_STORM (10m).
func BenchmarkStorm(b *testing.B) {
	if os.Getenv("VZ_STORM") == "" {
		b.Skip("!!! make soak runs it (VZ_STORM set)")
	}
	h := newHarness(b, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	var r stormResult
	for b.Loop() {
		r = storm(b, h, 8, stormTime(10*time.Minute))
	}
	fmt.Printf("storm (8 × ctr run -d, exec, kill, delete, vz):\n%-9s %-7s %-7s %-12s %-14s %-18s\n", "time", "cycles", "failed", "leaks found", "max shim RSS", "max containerd fds")
	fmt.Printf("%-9s %-7d %-7d %-12d %-14s %-18d\n", r.took.Round(time.Second), r.cycles, r.failed, len(r.leaks), fmt.Sprintf("%.1f MiB", float64(r.maxShimRSSKiB)/1024), r.maxFDs)
	for _, l := range r.leaks {
		fmt.Println("  leak:", l)
	}
	if len(r.leaks) > 0 || r.failed > 0 || r.fdsAfter > r.fdsBefore {
		b.Errorf("storm: %s", r)
	}
}

// BenchmarkBigOutput is make soak's: one task writes VZ_BIG_OUTPUT bytes (10 GiB) of zeros to its stdout,
// which ctr reads to the end; the shim's peak memory must stay under shimMemoryBound.
func BenchmarkBigOutput(b *testing.B) {
	size := os.Getenv("VZ_BIG_OUTPUT")
	if size == "" {
		b.Skip("!!! make soak runs it (VZ_BIG_OUTPUT set)")
	}
	h := newHarness(b, runtimeCase{name: "vz", runtime: vzRuntime, vm: true})
	var out countingWriter
	var took time.Duration
	var peak int64
	for b.Loop() {
		p := h.samplePeaks(50 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		cmd := h.d.ctrCommand(ctx, h.runArgs(h.rmFlags(), h.newID("big-output"), "head", "-c", size, "/dev/zero")...)
		cmd.Stdout = &out
		start := time.Now()
		err := cmd.Run()
		took = time.Since(start)
		cancel()
		p.stop()
		peak = p.shimHWMKiB
		if err != nil {
			b.Fatalf("ctr run writing %s: %v", size, err)
		}
	}
	fmt.Printf("big output (ctr run --rm … head -c %s /dev/zero, vz): %.2f GiB in %s (%.0f MiB/s), shim peak memory %.1f MiB\n",
		size, float64(out.n.Load())/(1<<30), took.Round(time.Second), float64(out.n.Load())/(1<<20)/took.Seconds(), float64(peak)/1024)
	if want, err := strconv.ParseInt(size, 10, 64); err != nil || out.n.Load() != want {
		b.Errorf("ctr read %d bytes, want %s", out.n.Load(), size)
	}
	if peak > shimMemoryBound {
		b.Errorf("shim peak memory %d KiB, over %d KiB", peak, shimMemoryBound)
	}
}
