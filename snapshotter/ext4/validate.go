package ext4

import (
	"archive/tar"
	"math"
	"strings"
)

// eventKind is what one tar entry means for the image.
type eventKind int

const (
	evSkip     eventKind = iota // nothing to write (root entry, global header, AUFS metadata)
	evEntry                     // a file, directory, link or device at path
	evWhiteout                  // path is deleted from the layers below
	evOpaque                    // directory path hides the contents of the layers below
)

type event struct {
	kind eventKind
	path string      // cleaned path ("" is the root, only for evOpaque)
	hdr  *tar.Header // sanitized header for evEntry; Name is path
}

// nodeKind is what a path is within the current layer; it is all the
// validator needs to decide whether later entries are sound.
type nodeKind uint8

const (
	nodeDir nodeKind = iota + 1
	nodeSymlink
	nodeOther // regular file, device, fifo
)

// validator checks the entries of one layer tar in order and turns each into
// a sanitized event. It keeps one byte per path, so memory grows with the
// number of entries, which Limits.MaxEntries bounds.
type validator struct {
	lim       Limits
	nodes     map[string]nodeKind
	entries   int
	dataBytes int64 // file data rounded up to blocks, a lower bound of the image size
}

func newValidator(lim Limits) *validator {
	return &validator{lim: lim, nodes: make(map[string]nodeKind)}
}

const blockSize = 4096

// check validates hdr, the idx-th header of the layer.
func (v *validator) check(idx int, hdr *tar.Header) (event, error) {
	v.entries++
	if v.entries > v.lim.MaxEntries {
		return event{}, entryError(idx, hdr.Name, "layer has more than %d entries", v.lim.MaxEntries)
	}

	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return event{kind: evSkip}, nil // containerd ignores these too
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeLink, tar.TypeSymlink,
		tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return event{}, entryError(idx, hdr.Name, "unsupported tar type flag %q", hdr.Typeflag)
	}

	p, err := cleanName(hdr.Name)
	if err != nil {
		return event{}, entryError(idx, hdr.Name, "%v", err)
	}
	if p == "" {
		// The root's metadata is the image's, as with containerd's
		// snapshotters, which ignore an entry that resolves to the root.
		return event{kind: evSkip}, nil
	}
	dir, base := splitPath(p)
	if err := v.checkParents(idx, hdr.Name, p); err != nil {
		return event{}, err
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return v.whiteout(idx, hdr.Name, dir, base)
	}

	out := &tar.Header{
		Typeflag:   hdr.Typeflag,
		Name:       p,
		Mode:       hdr.Mode & 0o7777,
		ModTime:    hdr.ModTime,
		AccessTime: hdr.AccessTime,
		ChangeTime: hdr.ChangeTime,
		Format:     tar.FormatPAX,
	}
	if hdr.Uid < 0 || int64(hdr.Uid) > math.MaxUint32 || hdr.Gid < 0 || int64(hdr.Gid) > math.MaxUint32 {
		return event{}, entryError(idx, hdr.Name, "uid/gid %d/%d out of range", hdr.Uid, hdr.Gid)
	}
	out.Uid, out.Gid = hdr.Uid, hdr.Gid
	if out.PAXRecords, err = xattrRecords(hdr); err != nil {
		return event{}, entryError(idx, hdr.Name, "%v", err)
	}

	kind := nodeOther
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		// Go's tar reader expands sparse files; the image stores them whole.
		out.Typeflag = tar.TypeReg
		if hdr.Size < 0 || hdr.Size > v.lim.MaxFileSize {
			return event{}, entryError(idx, hdr.Name, "file size %d exceeds the limit of %d bytes", hdr.Size, v.lim.MaxFileSize)
		}
		out.Size = hdr.Size
		v.dataBytes += (hdr.Size + blockSize - 1) &^ (blockSize - 1)
		if v.dataBytes > v.lim.MaxImageSize {
			return event{}, entryError(idx, hdr.Name, "layer data exceeds the image size limit of %d bytes", v.lim.MaxImageSize)
		}
	case tar.TypeDir:
		kind = nodeDir
	case tar.TypeSymlink:
		kind = nodeSymlink
		if hdr.Linkname == "" || len(hdr.Linkname) > maxSymlinkLen || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return event{}, entryError(idx, hdr.Name, "invalid symlink target of %d bytes", len(hdr.Linkname))
		}
		out.Linkname = hdr.Linkname
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return event{}, entryError(idx, hdr.Name, "hardlink target %q: %v", hdr.Linkname, err)
		}
		tk, ok := v.nodes[target]
		switch {
		case target == "" || tk == nodeDir:
			return event{}, entryError(idx, hdr.Name, "hardlink target %q is a directory", hdr.Linkname)
		case !ok:
			// A layer is applied on its own, so the target must come
			// earlier in the same layer (which also rules out targets
			// reached through a symlinked parent: those are rejected).
			return event{}, entryError(idx, hdr.Name, "hardlink target %q is not an earlier entry of this layer", hdr.Linkname)
		}
		kind = tk // a hardlink to a symlink is a symlink for later parent checks
		out.Linkname = target
		out.PAXRecords = nil // a link shares its target's inode
		out.Mode, out.Uid, out.Gid = 0, 0, 0
	case tar.TypeChar, tar.TypeBlock:
		// ext4's device encoding holds a 12-bit major and 20-bit minor.
		if hdr.Devmajor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor < 0 || hdr.Devminor >= 1<<20 {
			return event{}, entryError(idx, hdr.Name, "device %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		out.Devmajor, out.Devminor = hdr.Devmajor, hdr.Devminor
	}

	if prev, ok := v.nodes[p]; ok {
		switch {
		case prev == nodeDir && kind == nodeDir:
			// A directory entry after its children (or repeated) updates
			// its metadata.
		case prev == nodeDir:
			return event{}, entryError(idx, hdr.Name, "replaces a directory of the same layer")
		default:
			// Duplicates are legal tar but tar2ext4 cannot overwrite file
			// data it has already written; real layers never have them.
			return event{}, entryError(idx, hdr.Name, "duplicate entry in the same layer")
		}
	}
	v.nodes[p] = kind
	return event{kind: evEntry, path: p, hdr: out}, nil
}

// checkParents makes sure no ancestor of p is a symlink or a non-directory
// in this layer, and records the missing ones as directories, which the
// converter creates implicitly.
func (v *validator) checkParents(idx int, name, p string) error {
	return ancestors(p, func(a string) error {
		_, base := splitPath(a)
		if strings.HasPrefix(base, whiteoutPrefix) {
			return entryError(idx, name, "parent %q is a whiteout", a)
		}
		switch v.nodes[a] {
		case 0:
			v.nodes[a] = nodeDir
		case nodeDir:
		case nodeSymlink:
			return entryError(idx, name, "parent %q is a symlink of this layer", a)
		default:
			return entryError(idx, name, "parent %q is not a directory", a)
		}
		return nil
	})
}

func (v *validator) whiteout(idx int, name, dir, base string) (event, error) {
	if base == opaqueWhiteout {
		return event{kind: evOpaque, path: dir}, nil
	}
	if strings.HasPrefix(base, whiteoutMetaPrefix) {
		return event{kind: evSkip}, nil
	}
	target := base[len(whiteoutPrefix):]
	if target == "" || target == "." || target == ".." {
		return event{}, entryError(idx, name, "invalid whiteout")
	}
	return event{kind: evWhiteout, path: joinPath(dir, target)}, nil
}

// isDir reports whether p is a directory (explicit or implied) of this layer.
func (v *validator) isDir(p string) bool { return p == "" || v.nodes[p] == nodeDir }

// exists reports whether p is an entry (or implied directory) of this layer.
func (v *validator) exists(p string) bool { _, ok := v.nodes[p]; return ok || p == "" }

const (
	paxXattrPrefix = "SCHILY.xattr."
	// overlayfs's own metadata (user.overlay.* in userxattr mounts): only
	// whiteouts may produce it, a layer must not smuggle in redirects,
	// metacopy or opaque flags.
	overlayXattrPrefix     = "trusted.overlay."
	userOverlayXattrPrefix = "user.overlay."
	// inlineDataXattr is what compactext4 uses for inline data.
	inlineDataXattr = "system.data"
)

// xattrRecords returns the PAX xattr records of hdr worth keeping.
func xattrRecords(hdr *tar.Header) (map[string]string, error) {
	var recs map[string]string
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattrPrefix)
		if !ok || name == "" || name == inlineDataXattr ||
			strings.HasPrefix(name, overlayXattrPrefix) || strings.HasPrefix(name, userOverlayXattrPrefix) {
			continue
		}
		if len(name) > maxNameLen {
			return nil, errLongXattr
		}
		if recs == nil {
			recs = make(map[string]string)
		}
		recs[k] = v
	}
	return recs, nil
}
