package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

// ext4Node is what a layer image must hold at one path, as debugfs shows it.
type ext4Node struct {
	path   string
	typ    string // debugfs's Type: regular, directory, symlink, character special, block special, FIFO
	mode   int64  // permission bits with setuid/setgid/sticky; -1: not checked
	uid    int
	gid    int
	size   int64 // regular files; -1: not checked
	links  int   // 0: not checked
	target string
	major  int64
	minor  int64
	xattrs map[string]string // user.* and trusted.*
	inode  string            // group of names that must share an inode (hardlinks)
	// whiteout: an overlayfs whiteout (char 0/0) made from a .wh. entry; its owner is not checked.
	whiteout bool
}

// expectedLayerImage is what the ext4 image of a layer must hold: every tar entry at its path with
// its type, mode, owner, size, link count, symlink target, device numbers and xattrs; whiteouts as
// char 0/0 devices; opaque directories with trusted.overlay.opaque=y. children lists the names in
// each directory.
func expectedLayerImage(entries []testimage.Entry) (nodes map[string]*ext4Node, children map[string]map[string]bool, err error) {
	nodes = map[string]*ext4Node{}
	children = map[string]map[string]bool{"/": {}}
	clean := func(name string) string { return path.Clean("/" + name) }
	addChild := func(p string) {
		dir := path.Dir(p)
		if children[dir] == nil {
			children[dir] = map[string]bool{}
		}
		children[dir][path.Base(p)] = true
	}
	for _, e := range entries {
		h := e.Header
		p := clean(h.Name)
		base, dir := path.Base(p), path.Dir(p)
		switch {
		case base == ".wh..wh..opq":
			n := nodes[dir]
			if n == nil {
				return nil, nil, fmt.Errorf("opaque marker %s before its directory", p)
			}
			n.xattrs["trusted.overlay.opaque"] = "y"
			continue
		case strings.HasPrefix(base, ".wh."):
			p = path.Join(dir, strings.TrimPrefix(base, ".wh."))
			nodes[p] = &ext4Node{path: p, typ: "character special", mode: -1, size: -1, links: 1, xattrs: map[string]string{}, whiteout: true}
			addChild(p)
			continue
		}
		n := &ext4Node{path: p, mode: h.Mode & 0o7777, uid: h.Uid, gid: h.Gid, size: -1, xattrs: map[string]string{}}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				n.xattrs[name] = v
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			n.typ = "directory"
			if children[p] == nil {
				children[p] = map[string]bool{}
			}
		case tar.TypeReg:
			n.typ, n.size, n.links = "regular", int64(len(e.Data)), 1
		case tar.TypeSymlink:
			n.typ, n.target, n.mode, n.links = "symlink", h.Linkname, -1, 1
		case tar.TypeLink:
			t := nodes[clean(h.Linkname)]
			if t == nil {
				return nil, nil, fmt.Errorf("hardlink %s to %s, which comes later or not at all", p, h.Linkname)
			}
			if t.inode == "" {
				t.inode = t.path
			}
			cp := *t
			cp.path = p
			n = &cp
			for _, o := range nodes {
				if o.inode == t.inode {
					o.links++
				}
			}
			n.links = t.links
		case tar.TypeChar, tar.TypeBlock:
			n.typ = map[byte]string{tar.TypeChar: "character special", tar.TypeBlock: "block special"}[h.Typeflag]
			n.major, n.minor, n.links = h.Devmajor, h.Devminor, 1
		case tar.TypeFifo:
			n.typ, n.links = "FIFO", 1
		default:
			return nil, nil, fmt.Errorf("%s: tar type %q not modelled", p, h.Typeflag)
		}
		nodes[p] = n
		addChild(p)
	}
	return nodes, children, nil
}

// debugfs runs debugfs (read-only) on image with commands and returns its output split by
// command: debugfs echoes each command as "debugfs: CMD" before its output.
func debugfs(image string, commands []string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, suite.bin.debugfs, "-f", "-", image)
	cmd.Stdin = strings.NewReader(strings.Join(commands, "\n") + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out // one pipe: errors stay next to their command
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("debugfs %s: %w: %s", image, err, out.String())
	}
	sections := map[string]string{}
	cur := ""
	var b strings.Builder
	for _, line := range strings.Split(out.String(), "\n") {
		if c, ok := strings.CutPrefix(line, "debugfs: "); ok {
			if cur != "" {
				sections[cur] = b.String()
			}
			cur = c
			b.Reset()
			continue
		}
		b.WriteString(line + "\n")
	}
	if cur != "" {
		sections[cur] = b.String()
	}
	return sections, nil
}

var (
	statInodeRE = regexp.MustCompile(`Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+)`)
	statUserRE  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	statLinksRE = regexp.MustCompile(`Links: (\d+)`)
	statFastRE  = regexp.MustCompile(`Fast link dest: "(.*)"`)
	statDevRE   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	xattrRE     = regexp.MustCompile(`^\s+(\S+) \((\d+)\)(?: = "(.*)")?$`)
	lsEntryRE   = regexp.MustCompile(`^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$`)
)

// statNode is one `stat` of debugfs.
type statNode struct {
	inode, typ string
	mode       int64
	uid, gid   int
	size       int64
	links      int
	target     string
	major      int64
	minor      int64
	xattrs     map[string]string
}

func parseStat(s string) (statNode, error) {
	var n statNode
	m := statInodeRE.FindStringSubmatch(s)
	u := statUserRE.FindStringSubmatch(s)
	l := statLinksRE.FindStringSubmatch(s)
	if m == nil || u == nil || l == nil {
		return n, fmt.Errorf("not a debugfs stat: %q", strings.TrimSpace(s))
	}
	n.inode, n.typ = m[1], m[2]
	n.mode, _ = strconv.ParseInt(m[3], 8, 64)
	n.uid, _ = strconv.Atoi(u[1])
	n.gid, _ = strconv.Atoi(u[2])
	n.size, _ = strconv.ParseInt(u[3], 10, 64)
	n.links, _ = strconv.Atoi(l[1])
	if f := statFastRE.FindStringSubmatch(s); f != nil {
		n.target = f[1]
	}
	if d := statDevRE.FindStringSubmatch(s); d != nil {
		n.major, _ = strconv.ParseInt(d[1], 10, 64)
		n.minor, _ = strconv.ParseInt(d[2], 10, 64)
	}
	n.xattrs = map[string]string{}
	inX := false
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "Extended attributes:") {
			inX = true
			continue
		}
		if !inX {
			continue
		}
		x := xattrRE.FindStringSubmatch(line)
		if x == nil {
			inX = false
			continue
		}
		if strings.HasPrefix(x[1], "user.") || strings.HasPrefix(x[1], "trusted.") {
			n.xattrs[x[1]] = x[3]
		}
	}
	return n, nil
}

// checkLayerImage compares the ext4 image of a layer with the layer's tar entries and returns the
// differences (none: it matches).
func checkLayerImage(image string, entries []testimage.Entry) ([]string, error) {
	nodes, children, err := expectedLayerImage(entries)
	if err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(nodes))
	for p := range nodes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	dirs := make([]string, 0, len(children))
	for d := range children {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	var cmds []string
	for _, p := range paths {
		cmds = append(cmds, fmt.Sprintf("stat %q", p))
	}
	for _, d := range dirs {
		cmds = append(cmds, fmt.Sprintf("ls -p %q", d))
	}
	out, err := debugfs(image, cmds)
	if err != nil {
		return nil, err
	}

	var diffs []string
	bad := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	inodes := map[string]string{} // hardlink group -> inode
	for _, p := range paths {
		want := nodes[p]
		got, err := parseStat(out[fmt.Sprintf("stat %q", p)])
		if err != nil {
			bad("%s: %v", p, err)
			continue
		}
		if got.typ != want.typ {
			bad("%s: type %s, want %s", p, got.typ, want.typ)
			continue
		}
		if want.mode >= 0 && got.mode != want.mode {
			bad("%s: mode %04o, want %04o", p, got.mode, want.mode)
		}
		if !want.whiteout && (got.uid != want.uid || got.gid != want.gid) {
			bad("%s: owner %d:%d, want %d:%d", p, got.uid, got.gid, want.uid, want.gid)
		}
		if want.size >= 0 && got.size != want.size {
			bad("%s: size %d, want %d", p, got.size, want.size)
		}
		if want.links > 0 && got.links != want.links {
			bad("%s: %d links, want %d", p, got.links, want.links)
		}
		if want.typ == "symlink" && got.target != want.target {
			bad("%s: symlink to %q, want %q", p, got.target, want.target)
		}
		if (want.typ == "character special" || want.typ == "block special") && (got.major != want.major || got.minor != want.minor) {
			bad("%s: device %d:%d, want %d:%d", p, got.major, got.minor, want.major, want.minor)
		}
		if fmt.Sprint(got.xattrs) != fmt.Sprint(want.xattrs) {
			bad("%s: xattrs %v, want %v", p, got.xattrs, want.xattrs)
		}
		if want.inode != "" {
			if ino, ok := inodes[want.inode]; !ok {
				inodes[want.inode] = got.inode
			} else if ino != got.inode {
				bad("%s: inode %s, want %s (a hardlink of %s)", p, got.inode, ino, want.inode)
			}
		}
	}
	for _, d := range dirs {
		got := map[string]bool{}
		for _, line := range strings.Split(out[fmt.Sprintf("ls -p %q", d)], "\n") {
			if m := lsEntryRE.FindStringSubmatch(line); m != nil && m[5] != "" && m[5] != "." && m[5] != ".." { // "": a free slot
				got[m[5]] = true
			}
		}
		if d == "/" {
			delete(got, "lost+found")
		}
		for name := range got {
			if !children[d][name] {
				bad("%s: unexpected entry %s", d, name)
			}
		}
		for name := range children[d] {
			if !got[name] {
				bad("%s: entry %s missing from the listing", d, name)
			}
		}
	}
	return diffs, nil
}

// markerPath is a regular file of layer i that no other layer has at all: how a layer image is
// told from the others.
func markerPath(layers []testimage.Layer, i int) (string, error) {
	others := map[string]bool{}
	for j, l := range layers {
		if j == i {
			continue
		}
		for _, e := range l.Entries {
			p := path.Clean("/" + e.Header.Name)
			others[p] = true
			if b := path.Base(p); strings.HasPrefix(b, ".wh.") {
				others[path.Join(path.Dir(p), strings.TrimPrefix(b, ".wh."))] = true
			}
		}
	}
	for _, e := range layers[i].Entries {
		p := path.Clean("/" + e.Header.Name)
		if e.Header.Typeflag == tar.TypeReg && !strings.HasPrefix(path.Base(p), ".wh.") && !others[p] {
			return p, nil
		}
	}
	return "", fmt.Errorf("layer %d has no regular file of its own", i)
}

// hasRegular reports whether image holds a regular file at p.
func hasRegular(image, p string) (bool, error) {
	cmd := fmt.Sprintf("stat %q", p)
	out, err := debugfs(image, []string{cmd})
	if err != nil {
		return false, err
	}
	st, err := parseStat(out[cmd])
	return err == nil && st.typ == "regular", nil
}
