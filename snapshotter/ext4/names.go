package ext4

import (
	"errors"
	"strings"
)

const (
	whiteoutPrefix = ".wh."
	// whiteoutMetaPrefix marks AUFS bookkeeping files (.wh..wh.plnk, …);
	// like Docker and containerd we drop them, except the opaque marker.
	whiteoutMetaPrefix = ".wh..wh."
	opaqueWhiteout     = ".wh..wh..opq"

	maxNameLen    = 255  // ext4 directory entry name limit
	maxSymlinkLen = 4095 // PATH_MAX - 1
)

var (
	errEscapes   = errors.New("path escapes the root")
	errLongName  = errors.New("path component longer than 255 bytes")
	errLongXattr = errors.New("xattr name longer than 255 bytes")
)

// cleanName turns a tar name into a slash-separated path relative to the
// root, "" meaning the root itself. Like containerd's archive, a leading "/"
// and "." components are dropped; unlike it, a ".." that would climb above the
// root is an error instead of being clamped: no honest layer builder writes
// one.
func cleanName(name string) (string, error) {
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			if len(parts) == 0 {
				return "", errEscapes
			}
			parts = parts[:len(parts)-1]
		default:
			if len(c) > maxNameLen {
				return "", errLongName
			}
			parts = append(parts, c)
		}
	}
	return strings.Join(parts, "/"), nil
}

// splitPath returns the parent directory ("" for the root) and base of a
// cleaned, non-root path.
func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// joinPath joins a cleaned directory and a base name.
func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// ancestors calls fn for every proper ancestor of p, top down, excluding the
// root, stopping at the first error.
func ancestors(p string, fn func(string) error) error {
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			if err := fn(p[:i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitAll returns the components of a cleaned, non-root path.
func splitAll(p string) []string { return strings.Split(p, "/") }
