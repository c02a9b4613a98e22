package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bindFlag is ctr run's --mount of a host path.
func bindFlag(src, dst, options string) []string {
	return []string{"--mount", "type=bind,src=" + src + ",dst=" + dst + ",options=" + options}
}

// TestSharesRW: a rw bind of a host directory is shared both ways; a file the container writes
// as root is root's on the host (QEMU runs as root and 9p uses security_model=none, so the guest's
// owner is applied as is).
func TestSharesRW(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "from-host"), []byte("host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		id := h.newID("share-rw")
		r := h.ctr(h.runArgs(h.rmFlags(bindFlag(dir, "/data", "rbind:rw")...), id,
			"sh", "-c", "cat /data/from-host && echo container > /data/from-container")...)
		if r.code != 0 || r.stdout != "host\n" {
			t.Fatalf("want the host's file and exit 0: %s", r)
		}
		path := filepath.Join(dir, "from-container")
		b, err := os.ReadFile(path)
		if err != nil || string(b) != "container\n" {
			t.Fatalf("file written in the container: %q, %v", b, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("file written by root in the container is owned by %d:%d on the host, want 0:0", st.Uid, st.Gid)
		}
		t.Logf("ctr run --rm with a rw bind took %s", r.elapsed.Round(time.Millisecond))
	})
}

// TestSharesRO: writes to a ro bind fail in the container and leave the host directory alone.
func TestSharesRO(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		dir := t.TempDir()
		id := h.newID("share-ro")
		r := h.ctr(h.runArgs(h.rmFlags(bindFlag(dir, "/data", "rbind:ro")...), id,
			"sh", "-c", "echo x > /data/f; st=$?; grep ' /data ' /proc/self/mountinfo; exit $st")...)
		if r.code == 0 {
			t.Fatalf("writing to a ro bind succeeded: %s", r)
		}
		if !strings.Contains(r.stderr, "Read-only file system") {
			t.Errorf("want EROFS: %s", r)
		}
		if _, err := os.Stat(filepath.Join(dir, "f")); !os.IsNotExist(err) {
			t.Errorf("file written through a ro bind exists on the host: %v", err)
		}
		if !h.rt.vm {
			return
		}
		// Under vz the share itself is read-only too, not only the container's bind: the
		// guest's 9p superblock is ro, and so is QEMU's export.
		_, super, _ := strings.Cut(strings.TrimSpace(r.stdout), " - ")
		if f := strings.Fields(super); len(f) < 3 || f[0] != "9p" || !strings.HasPrefix(f[2], "ro,") {
			t.Errorf("want a read-only 9p superblock under /data: %s", r)
		}
		id = h.newID("share-ro-qemu")
		h.ctrOK(h.runArgs(append(detached(), bindFlag(dir, "/data", "rbind:ro")...), id, trapSleep(0)...)...)
		defer h.killAndRemove(id)
		fsdev := qemuFsdev(t, dir)
		if !strings.Contains(fsdev, ",readonly=on") {
			t.Errorf("QEMU exports %s as %q, want readonly=on", dir, fsdev)
		}
		t.Logf("guest superblock %q, QEMU -fsdev %s", super, fsdev)
	})
}

// TestSharesOnlyRequested: only the bound host paths reach the VM. A sibling directory of the
// bound one is nowhere in the container's mounts, and under vz the only shares mounted are the
// requested ones (one per host directory; a bound file shares its own directory).
func TestSharesOnlyRequested(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, h *harness) {
		parent := t.TempDir()
		shared, secret := filepath.Join(parent, "shared"), filepath.Join(parent, "secret")
		for _, d := range []string{shared, secret} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(secret, "marker"), []byte("secret\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		fileDir := t.TempDir()
		file := filepath.Join(fileDir, "conf")
		if err := os.WriteFile(file, []byte("conf\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		flags := append(bindFlag(shared, "/data", "rbind:rw"), bindFlag(file, "/etc/extra.conf", "rbind:ro")...)
		id := h.newID("share-only")
		r := h.ctr(h.runArgs(h.rmFlags(flags...), id,
			"sh", "-c", "cat /etc/extra.conf && ls -a /data && echo --- && cat /proc/mounts")...)
		if r.code != 0 {
			t.Fatalf("unexpected exit status: %s", r)
		}
		out, mounts, _ := strings.Cut(r.stdout, "---\n")
		if out != "conf\n.\n..\n" {
			t.Errorf("want the bound file and an empty /data: %s", r)
		}
		var tags []string
		for _, line := range strings.Split(strings.TrimSpace(mounts), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 {
				continue
			}
			if strings.Contains(line, secret) || strings.Contains(line, parent+" ") {
				t.Errorf("the unrequested host directory shows in the container's mounts: %q", line)
			}
			if f[2] == "9p" || f[2] == "virtiofs" {
				tags = append(tags, f[0]+" "+f[1])
			}
		}
		want := []string(nil)
		if h.rt.vm {
			want = []string{"s0 /data", "s1 /etc/extra.conf"}
		}
		if strings.Join(tags, ",") != strings.Join(want, ",") {
			t.Errorf("shared filesystems in the container %q, want %q: %s", tags, want, r)
		}
	})
}

// qemuFsdev is the -fsdev argument of the running QEMU that shares dir.
func qemuFsdev(t *testing.T, dir string) string {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		b, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if strings.HasPrefix(arg, "local,") && strings.Contains(arg, ",path="+dir+",") {
				return arg
			}
		}
	}
	t.Fatalf("no QEMU shares %s", dir)
	return ""
}
