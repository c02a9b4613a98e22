package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// proc is one process as /proc shows it.
type proc struct {
	pid, ppid int
	comm      string // at most 15 characters
	cmdline   string // arguments joined by spaces
	cwd       string
}

func (p proc) String() string {
	return fmt.Sprintf("pid %d (%s) cwd=%s cmdline=%q", p.pid, p.comm, p.cwd, p.cmdline)
}

func (p proc) isQEMU() bool { return strings.HasPrefix(p.comm, "qemu-system") }

// listProcs returns every process there is; processes that exit while being read are left out.
func listProcs() []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var procs []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		stat, err := os.ReadFile(filepath.Join(base, "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		p := proc{pid: pid, comm: s[open+1 : end]}
		if f := strings.Fields(s[end+1:]); len(f) > 1 {
			p.ppid, _ = strconv.Atoi(f[1])
		}
		if b, err := os.ReadFile(filepath.Join(base, "cmdline")); err == nil {
			p.cmdline = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		}
		p.cwd, _ = os.Readlink(filepath.Join(base, "cwd"))
		procs = append(procs, p)
	}
	return procs
}

// baseline is containerd's state before a test, so that the test is blamed only for what it
// added.
type baseline struct {
	snapshots map[string]bool // blockfile snapshot files (the image's layer)
	vzFiles   map[string]bool // files under the vz snapshotter's root
	netFiles  map[string]bool // the tasks' networks on the host (netFiles)
}

func (d *daemon) takeBaseline() baseline {
	b := baseline{snapshots: map[string]bool{}, vzFiles: map[string]bool{}, netFiles: map[string]bool{}}
	for _, f := range netFiles() {
		b.netFiles[f] = true
	}
	for _, f := range d.snapshotFiles() {
		b.snapshots[f] = true
	}
	if d.snap != nil {
		for _, f := range d.snap.files() {
			b.vzFiles[f] = true
		}
	}
	return b
}

func (d *daemon) snapshotFiles() []string {
	dir := filepath.Join(d.root, "io.containerd.snapshotter.v1.blockfile", "snapshots")
	ents, _ := os.ReadDir(dir)
	var files []string
	for _, e := range ents {
		files = append(files, filepath.Join(dir, e.Name()))
	}
	return files
}

// ownedProcs returns the processes of this containerd's world, other than containerd itself and
// the test binary: those whose command line or working directory names the temporary directory
// (shims get -address <dir>/containerd.sock and run in a bundle under <dir>/state; a VMM gets the
// disk images and sockets of the bundle), and their descendants (a VMM started by a shim).
//
// Other processes are never counted nor touched, whatever they are: other packages' tests run
// their own QEMUs on the same machine at the same time.
func (d *daemon) ownedProcs() []proc {
	procs := listProcs()
	byPID := make(map[int]proc, len(procs))
	for _, p := range procs {
		byPID[p.pid] = p
	}
	self := os.Getpid()
	daemonPID, snapPID := -1, -1
	if d.cmd != nil && d.cmd.Process != nil {
		daemonPID = d.cmd.Process.Pid
	}
	if d.snap != nil && d.snap.alive() == nil {
		snapPID = d.snap.cmd.Process.Pid
	}
	namesDir := func(p proc) bool {
		return strings.Contains(p.cmdline, d.dir+"/") || p.cwd == d.dir || strings.HasPrefix(p.cwd, d.dir+"/")
	}
	var owned []proc
	for _, p := range procs {
		if p.pid == self || p.pid == daemonPID || p.pid == snapPID {
			continue
		}
		for a, ok := p, true; ok && a.pid > 1 && a.pid != self && a.pid != daemonPID; a, ok = byPID[a.ppid] {
			if namesDir(a) {
				owned = append(owned, p)
				break
			}
		}
	}
	return owned
}

// hostLeaks lists what on the host outlives the tasks: processes, mounts, loop devices.
func (d *daemon) hostLeaks() []string {
	var problems []string
	for _, p := range d.ownedProcs() {
		problems = append(problems, "process "+p.String())
	}
	mounts, err := mountsUnder(d.dir)
	if err != nil {
		problems = append(problems, "reading mounts: "+err.Error())
	}
	for _, m := range mounts {
		problems = append(problems, "mount "+m)
	}
	for _, l := range loopDevicesUnder(d.dir) {
		problems = append(problems, "loop device "+l)
	}
	return problems
}

// stateLeaks lists what containerd and the shims keep for tasks and containers that should all
// be gone: containers, tasks, bundle and shim directories, shim sockets, FIFOs, runc state,
// writable snapshots (disk images), cgroups.
func (d *daemon) stateLeaks(base *baseline) []string {
	var problems []string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, what := range []string{"containers", "tasks"} {
		r, err := d.ctr(ctx, nil, what, "ls", "-q")
		switch {
		case err != nil || r.code != 0:
			problems = append(problems, fmt.Sprintf("%s ls: %v %s", what, err, r.stderr))
		case strings.TrimSpace(r.stdout) != "":
			problems = append(problems, fmt.Sprintf("%s left: %s", what, strings.Join(strings.Fields(r.stdout), " ")))
		}
	}
	for _, dir := range []string{
		filepath.Join(d.state, "io.containerd.runtime.v2.task", d.namespace), // bundles, shim state
		filepath.Join(d.root, "io.containerd.runtime.v2.task", d.namespace),  // shim work dirs
		d.socketDir,
		d.fifoDir,
		filepath.Join(d.runcRoot, d.namespace),
	} {
		ents, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			problems = append(problems, err.Error())
		}
		for _, e := range ents {
			problems = append(problems, "file "+filepath.Join(dir, e.Name()))
		}
	}
	for _, f := range d.snapshotFiles() {
		if base == nil || !base.snapshots[f] {
			problems = append(problems, "snapshot (disk image) "+f)
		}
	}
	// The vz snapshotter's layer and writable images, and whatever else it keeps on disk.
	if d.snap != nil {
		for _, f := range d.snap.files() {
			if base == nil || !base.vzFiles[f] {
				problems = append(problems, "vz snapshotter file "+filepath.Join(d.snap.root, f))
			}
		}
	}
	for _, cg := range cgroupsUnder(d.namespace) {
		problems = append(problems, "cgroup "+cg)
	}
	return problems
}

// checkLeaks waits up to timeout for the host and containerd to be clean of what a finished test
// made (shims exit asynchronously after their last task is deleted), then returns what is left.
func (d *daemon) checkLeaks(base *baseline, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		problems := append(d.hostLeaks(), d.stateLeaks(base)...)
		problems = append(problems, netLeaks(base)...)
		if len(problems) == 0 || time.Now().After(deadline) {
			return problems
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reap kills leaked processes (ours only, see ownedProcs), removes leaked FIFOs and detaches
// leaked mounts so that one test's leak does not fail the tests after it.
func (d *daemon) reap() {
	for _, p := range d.ownedProcs() {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	// ctr's FIFO directories of a ctr that was killed (a timeout): ctr removes its own.
	fifos, _ := os.ReadDir(d.fifoDir)
	for _, f := range fifos {
		os.RemoveAll(filepath.Join(d.fifoDir, f.Name()))
	}
	mounts, _ := mountsUnder(d.dir)
	// Deepest first.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	var points []string
	for _, m := range infos {
		points = append(points, m.Mountpoint)
	}
	return points, nil
}

// loopDevicesUnder lists loop devices whose backing file is below dir.
func loopDevicesUnder(dir string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if backing := strings.TrimSpace(string(b)); strings.HasPrefix(backing, dir+"/") {
			dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
			devs = append(devs, fmt.Sprintf("/dev/%s (%s)", dev, backing))
		}
	}
	return devs
}

// namespaceCgroups are the directories runc makes for the namespace: /<namespace> in each cgroup
// v1 hierarchy, or in the cgroup v2 tree.
func namespaceCgroups(namespace string) []string {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", namespace))
	if d := filepath.Join("/sys/fs/cgroup", namespace); isDir(d) {
		dirs = append(dirs, d)
	}
	return dirs
}

// cgroupsUnder lists the containers' cgroups left in the namespace's cgroup directories.
func cgroupsUnder(namespace string) []string {
	var left []string
	for _, d := range namespaceCgroups(namespace) {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() {
				left = append(left, filepath.Join(d, e.Name()))
			}
		}
	}
	return left
}

// removeCgroups removes the namespace's (by then empty) cgroup directories.
func removeCgroups(namespace string) {
	for _, d := range namespaceCgroups(namespace) {
		_ = os.Remove(d)
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
