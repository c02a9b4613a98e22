package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

// snapHarness is a snapshotter test's harness: the suite's containerd (whose vz snapshotter daemon
// the test drives), a registry of its own, and the snapshotter's log on failure.
type snapHarness struct {
	*harness
	s   *snapDaemon
	reg *registry
}

// newSnapHarness skips tb (loudly) when the snapshotter tests cannot run here, and with vm when
// the VM runtime cannot; it fails tb when the snapshotter should run but does not.
func newSnapHarness(tb testing.TB, vm bool) *snapHarness {
	tb.Helper()
	var snapLog int64
	// Registered first so that it runs last, after the harness's leak check.
	tb.Cleanup(func() {
		if tb.Failed() && suite.d != nil && suite.d.snap != nil {
			var b strings.Builder
			suite.d.snap.dumpLog(&b, snapLog)
			tb.Log(b.String())
		}
	})
	rt := runtimeCase{name: "vzsnap", runtime: runcRuntime}
	if vm {
		rt = runtimeCase{name: "vzsnap-vm", runtime: vzRuntime, vm: true}
	}
	if suite.skipAll == "" && suite.skipSnap != "" {
		tb.Skip(skipPrefix + "snapshotter tests: " + suite.skipSnap)
	}
	h := newHarness(tb, rt)
	s := h.d.snap
	snapLog = s.logSize()
	if err := s.alive(); err != nil {
		tb.Fatalf("the vz snapshotter does not serve: %v", err)
	}
	return &snapHarness{harness: h, s: s, reg: startRegistry(tb)}
}

// pull is `ctr image pull --plain-http --snapshotter sn ref`.
func (h *snapHarness) pull(sn, ref string) result {
	h.tb.Helper()
	return h.ctr("image", "pull", "--plain-http", "--snapshotter", sn, "--platform", "linux/"+runtime.GOARCH, ref)
}

// removeImage removes ref and waits for containerd's garbage collection (content, snapshots).
func (h *snapHarness) removeImage(ref string) {
	h.tb.Helper()
	h.ctrOK("image", "rm", "--sync", ref)
}

// snapshots maps the keys of the snapshotter's snapshots (as containerd names them) to their kind.
func (h *snapHarness) snapshots(sn string) map[string]string {
	h.tb.Helper()
	out := h.ctrOK("snapshots", "--snapshotter", sn, "ls")
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] == "KEY" {
			continue
		}
		m[f[0]] = f[len(f)-1]
	}
	return m
}

// waitSnapshotDirs waits up to timeout for the snapshotter's snapshot directories to be exactly
// want (garbage collection and clean-up are asynchronous) and returns what is there.
func (h *snapHarness) waitSnapshotDirs(want []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		got := h.s.snapshotDirs()
		if slices.Equal(got, want) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var tricky struct {
	once   sync.Once
	layers []testimage.Layer
	img    *testimage.Image
	bigSum string
	err    error
}

// trickyImage builds the tricky image once per test binary (testimage.Tricky).
func trickyImage(tb testing.TB) ([]testimage.Layer, *testimage.Image) {
	tb.Helper()
	tricky.once.Do(func() {
		tricky.layers, tricky.err = testimage.Tricky(suite.bin.busybox)
		if tricky.err != nil {
			return
		}
		tricky.img, tricky.err = testimage.BuildImage(tricky.layers, "containerd-shim-vz integration tests: tricky")
		for _, l := range tricky.layers {
			for _, e := range l.Entries {
				if e.Header.Name == "tricky/big" {
					sum := sha256.Sum256(e.Data)
					tricky.bigSum = hex.EncodeToString(sum[:])
				}
			}
		}
	})
	if tricky.err != nil {
		tb.Fatalf("build the tricky image: %v", tricky.err)
	}
	return tricky.layers, tricky.img
}

// layerImages returns the layer images (layer.ext4) in dirs, and fails tb when a directory holds
// something else than a committed layer (a writable image, a temporary file).
func (h *snapHarness) layerImages(dirs []string) []string {
	h.tb.Helper()
	var images []string
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			h.tb.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !slices.Contains(names, "layer.ext4") {
			h.tb.Errorf("snapshot directory %s holds %q, no layer.ext4", d, names)
			continue
		}
		if slices.Contains(names, "rw.ext4") {
			h.tb.Errorf("committed snapshot %s still holds a writable image: %q", d, names)
		}
		images = append(images, filepath.Join(d, "layer.ext4"))
	}
	return images
}

// fsck runs e2fsck -fn on image; any exit status but 0 is an error.
func fsck(image string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, suite.bin.e2fsck, "-fn", image).CombinedOutput()
	if err != nil {
		return fmt.Errorf("e2fsck -fn %s: %w\n%s", image, err, out)
	}
	return nil
}

// fileID is what tells a file rewritten from the same file left alone.
type fileID struct {
	ino   uint64
	mtime time.Time
	size  int64
}

func statID(p string) (fileID, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return fileID{}, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileID{ino: st.Ino, mtime: fi.ModTime(), size: fi.Size()}, nil
}

// diskUsage is the space the files under dir take (allocated blocks, each inode once).
func diskUsage(dir string) int64 {
	var total int64
	seen := map[uint64]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !seen[st.Ino] {
			seen[st.Ino] = true
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}

// appliedMsg is what the vz differ logs (at debug level) for each layer it applies, with the
// layer's diffID (snapshotter/differ).
const appliedMsg = "layer applied"

// appliedLines counts the differ's log lines of applying the layer diffID.
func appliedLines(log string, diffID digest.Digest) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, appliedMsg) && strings.Contains(line, diffID.Encoded()) {
			n++
		}
	}
	return n
}

func newPaths(after, before []string) []string {
	var added []string
	for _, p := range after {
		if !slices.Contains(before, p) {
			added = append(added, p)
		}
	}
	return added
}

// TestSnapshotterPull: the tricky image pulled into the vz snapshotter gives one fsck-clean ext4
// image per layer holding exactly that layer's entries (whiteouts and opaque directories in
// overlayfs form); pulling again reuses them; removing the image frees them.
func TestSnapshotterPull(t *testing.T) {
	h := newSnapHarness(t, false)
	layers, img := trickyImage(t)
	ref := h.reg.push(t, "tricky", "1", img)
	before := h.s.snapshotDirs()
	usageBefore := diskUsage(filepath.Join(h.s.root, "snapshots"))

	logMark, ctrdMark := h.s.logSize(), h.d.logSize()
	r := h.pull(vzSnapshotter, ref)
	if r.code != 0 {
		t.Fatalf("pull into vz: %s", r)
	}
	t.Logf("pulled %s into vz in %s", ref, r.elapsed.Round(time.Millisecond))
	// The layers were unpacked side by side: vz advertises rebase (config.toml.example).
	if !slices.ContainsFunc(strings.Split(h.d.logSince(ctrdMark), "\n"), func(l string) bool {
		return strings.Contains(l, "image unpacked") && strings.Contains(l, "parallel=true")
	}) {
		t.Errorf("containerd did not unpack the image in parallel (no \"image unpacked\" with parallel=true in its log)")
	}
	for i, l := range img.Layers {
		if n := appliedLines(h.s.logSince(logMark), l.DiffID); n != 1 {
			t.Errorf("layer %d (%s): applied %d times by the vz differ, want once", i, l.DiffID, n)
		}
	}
	afterPull := h.s.snapshotDirs()
	images := h.layerImages(newPaths(afterPull, before))
	if len(images) != len(layers) {
		t.Errorf("%d layer images after the pull, want one per layer (%d): %q", len(images), len(layers), images)
	}
	kinds := h.snapshots(vzSnapshotter)
	for i, id := range img.ChainIDs() {
		if kinds[id.String()] != "Committed" {
			t.Errorf("layer %d: snapshot %s is %q, want Committed (snapshots: %v)", i, id, kinds[id.String()], kinds)
		}
	}

	// Each layer's image: fsck-clean, and the layer's entries exactly.
	for _, image := range images {
		if err := fsck(image); err != nil {
			t.Error(err)
		}
	}
	for i, l := range layers {
		marker, err := markerPath(layers, i)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, image := range images {
			ok, err := hasRegular(image, marker)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				found = append(found, image)
			}
		}
		if len(found) != 1 {
			t.Errorf("layer %d: %d layer images hold its %s, want 1: %q", i, len(found), marker, found)
			continue
		}
		diffs, err := checkLayerImage(found[0], l.Entries)
		if err != nil {
			t.Fatal(err)
		}
		if len(diffs) > 0 {
			t.Errorf("layer %d (%s) differs from its tar:\n  %s", i, found[0], strings.Join(diffs, "\n  "))
		}
	}

	// Pulling again: the same snapshots, the layer images untouched.
	ids := map[string]fileID{}
	for _, image := range images {
		id, err := statID(image)
		if err != nil {
			t.Fatal(err)
		}
		ids[image] = id
	}
	logMark = h.s.logSize()
	r = h.pull(vzSnapshotter, ref)
	if r.code != 0 {
		t.Fatalf("second pull: %s", r)
	}
	for i, l := range img.Layers {
		if n := appliedLines(h.s.logSince(logMark), l.DiffID); n != 0 {
			t.Errorf("second pull: layer %d (%s) applied again (%d times)", i, l.DiffID, n)
		}
	}
	if again := h.s.snapshotDirs(); !slices.Equal(again, afterPull) {
		t.Errorf("second pull changed the snapshot directories: %q, before it %q", again, afterPull)
	}
	for image, id := range ids {
		if now, err := statID(image); err != nil || now != id {
			t.Errorf("second pull rewrote %s: %+v, was %+v (%v)", image, now, id, err)
		}
	}

	// Removing the image: its snapshots and their disk space are gone.
	h.removeImage(ref)
	if left := h.waitSnapshotDirs(before, 30*time.Second); !slices.Equal(left, before) {
		t.Errorf("after image rm --sync: snapshot directories %q, want %q", left, before)
	}
	kinds = h.snapshots(vzSnapshotter)
	for i, id := range img.ChainIDs() {
		if k, ok := kinds[id.String()]; ok {
			t.Errorf("after image rm: layer %d's snapshot %s is still there (%s)", i, id, k)
		}
	}
	if usage := diskUsage(filepath.Join(h.s.root, "snapshots")); usage > usageBefore+(1<<20) {
		t.Errorf("after image rm: the snapshots take %d bytes, %d before the pull", usage, usageBefore)
	}
}

// hostileCase is a layer the snapshotter must refuse.
type hostileCase struct {
	name  string
	layer testimage.Layer
	// blob, when set, changes the encoded layer before it is pushed.
	blob func(testimage.Blob) testimage.Blob
	// corrupt: the registry serves the blob with bytes that do not match its digest.
	corrupt bool
	// mentions: the failed pull's error names at least one of these.
	mentions []string
	// escapes: file names that must appear nowhere outside the snapshotter's root.
	escapes []string
}

func hostileCases() []hostileCase {
	tag := fmt.Sprintf("vz-escape-%d", os.Getpid())
	reg := func(name string, data []byte) testimage.Entry {
		return testimage.Entry{Header: tarHeader(name, tar.TypeReg, ""), Data: data}
	}
	return []hostileCase{
		{
			name:     "dotdot",
			layer:    testimage.Layer{Entries: []testimage.Entry{reg("../"+tag+"-dotdot", []byte("escaped\n"))}},
			mentions: []string{tag + "-dotdot"},
			escapes:  []string{tag + "-dotdot"},
		},
		{
			name: "symlink-parent",
			layer: testimage.Layer{Entries: []testimage.Entry{
				{Header: tarHeader("escape-link", tar.TypeSymlink, "/tmp")},
				reg("escape-link/"+tag+"-symlink", []byte("escaped through a symlink\n")),
			}},
			mentions: []string{"escape-link", tag + "-symlink"},
			escapes:  []string{tag + "-symlink"},
		},
		{
			name: "hardlink-outside",
			layer: testimage.Layer{Entries: []testimage.Entry{
				{Header: tarHeader(tag+"-passwd", tar.TypeLink, "../../etc/passwd")},
			}},
			mentions: []string{"../../etc/passwd", tag + "-passwd"},
			escapes:  []string{tag + "-passwd"},
		},
		{
			name:  "truncated-gzip",
			layer: testimage.Layer{Entries: []testimage.Entry{reg("truncated", testimage.PseudoRandom(7, 256<<10))}},
			blob: func(b testimage.Blob) testimage.Blob {
				return b.Truncated(len(b.Data) / 2)
			},
			mentions: []string{"unexpected EOF", "truncated", "gzip"},
		},
		{
			name:     "digest-mismatch",
			layer:    testimage.Layer{Entries: []testimage.Entry{reg("corrupted", testimage.PseudoRandom(8, 256<<10))}},
			corrupt:  true,
			mentions: []string{"digest", "mismatch"},
		},
	}
}

// TestSnapshotterHostileLayers: layers that try to write outside the snapshot, or whose bytes are
// broken, are refused: the pull fails naming the problem, no snapshot of the layer remains, no file
// appears outside the snapshotter's root, and the snapshotter then serves a good pull.
func TestSnapshotterHostileLayers(t *testing.T) {
	for i, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			h := newSnapHarness(t, false)
			blob, err := c.layer.Blob()
			if err != nil {
				t.Fatal(err)
			}
			if c.blob != nil {
				blob = c.blob(blob)
			}
			img, err := testimage.NewImage([]testimage.Blob{blob}, "hostile layer "+c.name)
			if err != nil {
				t.Fatal(err)
			}
			ref := h.reg.push(t, "hostile", c.name, img)
			if c.corrupt {
				h.reg.corruptBlob(t, blob.Digest)
			}
			before := h.s.snapshotDirs()
			snapsBefore := h.snapshots(vzSnapshotter)

			r := h.pull(vzSnapshotter, ref)
			if r.code == 0 {
				t.Errorf("pull of a %s layer succeeded: %s", c.name, r)
			} else if !containsAny(r.stderr+r.stdout, c.mentions) {
				t.Errorf("pull failed without naming the problem (want one of %q): %s", c.mentions, r)
			} else {
				t.Logf("refused as it should: %s", lineWithAny(r.stderr+r.stdout, c.mentions))
			}
			for key, kind := range h.snapshots(vzSnapshotter) {
				if _, ok := snapsBefore[key]; !ok {
					t.Errorf("after the failed pull: new snapshot %s (%s)", key, kind)
				}
			}
			if left := h.waitSnapshotDirs(before, 10*time.Second); !slices.Equal(left, before) {
				t.Errorf("after the failed pull: snapshot directories %q, want %q", left, before)
			}
			for _, name := range c.escapes {
				for _, dir := range escapeDirs(h.d, h.s) {
					if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
						t.Errorf("the layer wrote outside the snapshotter's root: %s exists", filepath.Join(dir, name))
						_ = os.Remove(filepath.Join(dir, name))
					}
				}
			}
			// The failed pull may have left the image record and its content.
			_ = h.ctr("image", "rm", "--sync", ref)

			// Still serving: a good image of its own pulls fine.
			good, err := testimage.BuildImage([]testimage.Layer{testimage.Small(i)}, "good after "+c.name)
			if err != nil {
				t.Fatal(err)
			}
			goodRef := h.reg.push(t, "good", c.name, good)
			if r := h.pull(vzSnapshotter, goodRef); r.code != 0 {
				t.Errorf("good pull after the %s layer: %s", c.name, r)
			}
			h.removeImage(goodRef)
			if left := h.waitSnapshotDirs(before, 30*time.Second); !slices.Equal(left, before) {
				t.Errorf("after removing the good image: snapshot directories %q, want %q", left, before)
			}
		})
	}
}

// escapeDirs are where a layer entry that escaped its snapshot would land.
func escapeDirs(d *daemon, s *snapDaemon) []string {
	dirs := []string{"/", "/tmp", "/etc", os.TempDir(), d.dir, s.root, filepath.Join(s.root, "snapshots")}
	if ents, err := os.ReadDir(filepath.Join(s.root, "snapshots")); err == nil {
		for _, e := range ents {
			dirs = append(dirs, filepath.Join(s.root, "snapshots", e.Name()))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, wd, filepath.Dir(wd))
	}
	return dirs
}

// lineWithAny is the first line of s that holds one of subs.
func lineWithAny(s string, subs []string) string {
	for _, line := range strings.Split(s, "\n") {
		if containsAny(line, subs) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// vmScript is what the container of TestSnapshotterRunVM runs: it reports what it sees as
// key=value lines, and leaves /persist behind on its first run.
const vmScript = `if [ -e /persist ]; then echo "run=second $(cat /persist)"; else echo run=first; echo kept > /persist; fi
if [ -e /tricky/deleted ]; then echo deleted=present; else echo deleted=absent; fi
echo "opaque=$(ls -A /tricky/opaque | sort | tr '\n' ' ')"
echo "links=$(stat -c %h /tricky/hard1) $(stat -c %h /tricky/hard2)"
echo "symlink=$(readlink /tricky/symlink) $(cat /tricky/symlink)"
echo "owned=$(stat -c '%u:%g %a' /tricky/owned)"
echo "setuid=$(stat -c %a /tricky/setuid)"
echo "fifo=$(stat -c %F /tricky/fifo)"
echo "late=$(cat /tricky/added-late)"
set -- $(sha256sum /tricky/big)
echo "big=$1"
echo done
`

// parseReport turns the key=value lines of vmScript into a map.
func parseReport(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	if strings.Contains(out, "\ndone") || strings.HasPrefix(out, "done") {
		m["done"] = "yes"
	}
	return m
}

// TestSnapshotterRunVM: a container of the tricky image on vz snapshots runs in a VM and sees the
// merged view; what it writes survives a new task of the same container and is gone with the
// container.
func TestSnapshotterRunVM(t *testing.T) {
	h := newSnapHarness(t, true)
	_, img := trickyImage(t)
	ref := h.reg.push(t, "tricky", "1", img)
	before := h.s.snapshotDirs()
	if r := h.pull(vzSnapshotter, ref); r.code != 0 {
		t.Fatalf("pull into vz: %s", r)
	}
	afterPull := h.s.snapshotDirs()

	check := func(what, out, wantRun string) {
		t.Helper()
		got := parseReport(out)
		want := map[string]string{
			"run":     wantRun,
			"deleted": "absent",
			"opaque":  "new",
			"links":   "2 2",
			"symlink": "hard1 one inode, two names",
			"owned":   "1234:5678 640",
			"setuid":  "4755",
			"fifo":    "fifo",
			"late":    "from the last layer",
			"big":     tricky.bigSum,
			"done":    "yes",
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s=%q, want %q\noutput:\n%s", what, k, got[k], v, indent(out))
			}
		}
	}
	vmFlags := []string{"--snapshotter", vzSnapshotter, "--runtime", vzRuntime, "--runtime-config-path", h.d.vzConfig}

	id := h.newID("snapvm")
	h.ctrOK(append(append([]string{"containers", "create"}, vmFlags...), ref, id, "sh", "-c", vmScript)...)
	for i, wantRun := range []string{"first", "second kept"} {
		r := h.ctr(append(append([]string{"tasks", "start"}, h.fifoFlag()...), id)...)
		if r.code != 0 {
			t.Fatalf("task %d of %s: %s", i+1, id, r)
		}
		t.Logf("task %d of %s ran in %s", i+1, id, r.elapsed.Round(time.Millisecond))
		check(fmt.Sprintf("task %d", i+1), r.stdout, wantRun)
		if _, ok := h.task(id); ok {
			h.deleteTask(id)
		}
	}
	h.removeContainer(id)
	if left := h.waitSnapshotDirs(afterPull, 30*time.Second); !slices.Equal(left, afterPull) {
		t.Errorf("after ctr containers rm: snapshot directories %q, want the image's %q", left, afterPull)
	}

	// A new container of the same image starts from the image, not from what the first wrote;
	// and it sees the same view through one merged image: with --max-layers 1 the snapshotter
	// merges the image's four layers (whiteouts, opaque directory, hardlinks applied) into one.
	if err := h.d.restartSnapshotter("--max-layers", "1"); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := h.d.restartSnapshotter(); err != nil {
				t.Errorf("restart the snapshotter with its default flags: %v", err)
			}
		}
	}
	t.Cleanup(restore)
	id2 := h.newID("snapvm-new")
	args := append(append([]string{"run", "--rm"}, h.fifoFlag()...), vmFlags...)
	r := h.ctr(append(args, ref, id2, "sh", "-c", vmScript)...)
	if r.code != 0 {
		t.Fatalf("run a new container: %s", r)
	}
	t.Logf("new container %s (one merged layer image) ran in %s", id2, r.elapsed.Round(time.Millisecond))
	check("new container", r.stdout, "first")
	merged, _ := filepath.Glob(filepath.Join(h.s.root, "merged", "*.ext4"))
	if len(merged) != 1 {
		t.Errorf("merged images %q, want one", merged)
	}
	for _, m := range merged {
		if err := fsck(m); err != nil {
			t.Error(err)
		}
	}
	restore()

	h.removeImage(ref)
	if left := h.waitSnapshotDirs(before, 30*time.Second); !slices.Equal(left, before) {
		t.Errorf("after image rm: snapshot directories %q, want %q", left, before)
	}
}

// BenchmarkUnpack: unpacking a ~200 MiB four-layer image (many small files, some big ones) with the
// vz snapshotter and differ against containerd's overlayfs snapshotter with the walking differ,
// side by side. The blobs are local (fetched once before): the time is the unpack. It reports
// the time of each, their ratio, and the disk space each takes.
func BenchmarkUnpack(b *testing.B) {
	h := newSnapHarness(b, false)
	img, err := testimage.BuildImage(testimage.Bench(), "unpack benchmark")
	if err != nil {
		b.Fatal(err)
	}
	ref := h.reg.push(b, "bench", "1", img)
	chain := img.ChainIDs()
	dirs := map[string]string{
		vzSnapshotter: filepath.Join(h.s.root, "snapshots"),
		"overlayfs":   filepath.Join(h.d.root, "io.containerd.snapshotter.v1.overlayfs", "snapshots"),
	}
	baseUsage := map[string]int64{}
	for sn, dir := range dirs {
		baseUsage[sn] = diskUsage(dir)
	}
	// removeChain removes the image's snapshots in sn, top first (the content stays), and waits
	// for the garbage collector to free their space, so that the next measure starts clean. Once
	// the top is gone the collector may remove the others first: "not found" is fine.
	removeChain := func(sn string) {
		for i := len(chain) - 1; i >= 0; i-- {
			r := h.ctr("snapshots", "--snapshotter", sn, "rm", chain[i].String())
			if r.code != 0 && !strings.Contains(r.stderr, "not found") {
				b.Fatalf("remove snapshot: %s", r)
			}
		}
		deadline := time.Now().Add(time.Minute)
		for diskUsage(dirs[sn]) > baseUsage[sn]+(1<<20) {
			if time.Now().After(deadline) {
				b.Fatalf("%s: %d bytes still used a minute after removing the snapshots, %d before", sn, diskUsage(dirs[sn]), baseUsage[sn])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Fetch the content once (the image record keeps it).
	if r := h.pull("overlayfs", ref); r.code != 0 {
		b.Fatalf("warm-up pull: %s", r)
	}
	removeChain("overlayfs")

	var total = map[string]time.Duration{}
	var usage = map[string]int64{}
	n := 0
	for b.Loop() {
		n++
		for _, sn := range []string{vzSnapshotter, "overlayfs"} {
			before := diskUsage(dirs[sn])
			// The previous pull's dirty pages are written back now, not
			// during (and at the cost of) this one.
			syscall.Sync()
			r := h.pull(sn, ref)
			if r.code != 0 {
				b.Fatalf("pull into %s: %s", sn, r)
			}
			total[sn] += r.elapsed
			usage[sn] = diskUsage(dirs[sn]) - before
			removeChain(sn)
		}
	}
	h.removeImage(ref)
	// Garbage collection removes the snapshots asynchronously: the leak check waits for it.

	vz, ov := total[vzSnapshotter]/time.Duration(n), total["overlayfs"]/time.Duration(n)
	b.ReportMetric(vz.Seconds(), "vz-s/op")
	b.ReportMetric(ov.Seconds(), "overlayfs-s/op")
	b.ReportMetric(vz.Seconds()/ov.Seconds(), "vz/overlayfs")
	b.ReportMetric(float64(usage[vzSnapshotter])/(1<<20), "vz-MiB")
	b.ReportMetric(float64(usage["overlayfs"])/(1<<20), "overlayfs-MiB")
	b.Logf("unpack of %s (%d layers): vz %s, overlayfs+walking %s (x%.2f); on disk vz %.1f MiB, overlayfs %.1f MiB",
		ref, len(chain), vz.Round(time.Millisecond), ov.Round(time.Millisecond), vz.Seconds()/ov.Seconds(),
		float64(usage[vzSnapshotter])/(1<<20), float64(usage["overlayfs"])/(1<<20))
}

// tarHeader is the header of a hostile entry: typ is a tar type flag, link its link target.
func tarHeader(name string, typ byte, link string) tar.Header {
	mode := int64(0o644)
	if typ == tar.TypeSymlink {
		mode = 0o777
	}
	return tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: mode}
}
