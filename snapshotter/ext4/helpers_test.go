package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireTool returns the path of an e2fsprogs tool. The tests mean to check
// images with the real tools, so in CI a missing tool fails the test.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required (apt-get install e2fsprogs): %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// fsck runs e2fsck -fn on img and fails the test unless it exits 0.
func fsck(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command(requireTool(t, "e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// debugfs runs one read-only debugfs request against img.
func debugfs(t testing.TB, img, req string) string {
	t.Helper()
	out, err := exec.Command(requireTool(t, "debugfs"), "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

// inodeInfo is what the tests compare of an inode.
type inodeInfo struct {
	Type         string // debugfs type: regular, directory, symlink, FIFO, character special, ...
	Mode         int64
	Uid, Gid     int
	Size         int64
	Links        int
	LinkTarget   string
	Major, Minor int
}

var (
	reType  = regexp.MustCompile(`Type: (.+?)\s+Mode:\s+(\d+)`)
	reOwner = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	reLinks = regexp.MustCompile(`Links: (\d+)`)
	reFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
)

// stat reads an inode back with debugfs; ok is false when p does not exist.
func stat(t testing.TB, img, p string) (inodeInfo, bool) {
	t.Helper()
	out := debugfs(t, img, "stat "+p)
	if strings.Contains(out, "File not found by ext2_lookup") {
		return inodeInfo{}, false
	}
	var in inodeInfo
	m := reType.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("debugfs stat %s: unexpected output:\n%s", p, out)
	}
	in.Type = m[1]
	in.Mode, _ = strconv.ParseInt(m[2], 8, 64)
	if m := reOwner.FindStringSubmatch(out); m != nil {
		in.Uid, _ = strconv.Atoi(m[1])
		in.Gid, _ = strconv.Atoi(m[2])
		in.Size, _ = strconv.ParseInt(m[3], 10, 64)
	}
	if m := reLinks.FindStringSubmatch(out); m != nil {
		in.Links, _ = strconv.Atoi(m[1])
	}
	if m := reFast.FindStringSubmatch(out); m != nil {
		in.LinkTarget = m[1]
	}
	if m := reDev.FindStringSubmatch(out); m != nil {
		in.Major, _ = strconv.Atoi(m[1])
		in.Minor, _ = strconv.Atoi(m[2])
	}
	return in, true
}

// ls lists the names in directory p of img, without "." and "..".
func ls(t testing.TB, img, p string) []string {
	t.Helper()
	out := debugfs(t, img, "ls -p "+p)
	var names []string
	for _, line := range strings.Split(out, "\n") {
		// /ino/mode/uid/gid/name/size/
		f := strings.Split(line, "/")
		if len(f) < 7 || f[5] == "" || f[5] == "." || f[5] == ".." {
			continue
		}
		names = append(names, f[5])
	}
	sort.Strings(names)
	return names
}

// xattrs returns the ea_list output of p.
func xattrs(t testing.TB, img, p string) string {
	t.Helper()
	return debugfs(t, img, "ea_list "+p)
}

// catFile returns the content of regular file p.
func catFile(t testing.TB, img, p string) []byte {
	t.Helper()
	out, err := exec.Command(requireTool(t, "debugfs"), "-R", "cat "+p, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return out
}

// entry is one tar entry of a test layer.
type entry struct {
	hdr  tar.Header
	data []byte
}

var epoch = time.Unix(1700000000, 0)

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch}}
}

func file(name string, mode int64, data string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}, data: []byte(data)}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: epoch}}
}

func whiteout(name string) entry { return file(name, 0o644, "") }

// buildTar writes entries as a PAX tar.
func buildTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatalf("tar data %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// convert runs ConvertLayer on data into a new image in a fresh directory.
func convert(t testing.TB, data []byte, lim Limits) (string, Stats, error) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "layer.ext4")
	st, err := ConvertLayer(context.Background(), bytes.NewReader(data), img, lim)
	return img, st, err
}

// mustNotExist fails when p exists.
func mustNotExist(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a failed conversion (stat: %v)", p, err)
	}
}
