package ext4

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/containerd/errdefs"
)

// Merge builds the final view of the layers as a tree of headers, without
// touching file contents, then streams one tar of that tree into the
// converter: directories and data-less files from memory, file data by
// re-opening the layers that still own some, hardlinks last.

// object is one inode of the merged view; hardlinked paths share one.
type object struct {
	hdr     *tar.Header // sanitized; Name is the path it was created at
	layer   int         // layer holding the data
	index   int         // ordinal of its header in that layer
	primary string      // path written with the data; "" until chosen
}

type mnode struct {
	children map[string]*mnode // non-nil for directories
	hdr      *tar.Header       // directory metadata; nil for an implied directory
	obj      *object           // non-directories
}

func newDir(hdr *tar.Header) *mnode { return &mnode{children: make(map[string]*mnode), hdr: hdr} }

func (n *mnode) isDir() bool { return n.children != nil }

// lookup returns the node at p, or nil.
func (n *mnode) lookup(p string) *mnode {
	if p == "" {
		return n
	}
	for _, c := range splitAll(p) {
		if !n.isDir() {
			return nil
		}
		if n = n.children[c]; n == nil {
			return nil
		}
	}
	return n
}

// parentDir returns the directory node that will hold p, creating implied
// directories and replacing non-directories on the way: in overlayfs an
// upper directory hides a lower file of the same name.
func (n *mnode) parentDir(p string) *mnode {
	dir, _ := splitPath(p)
	if dir == "" {
		return n
	}
	for _, c := range splitAll(dir) {
		child := n.children[c]
		if child == nil || !child.isDir() {
			child = newDir(nil)
			n.children[c] = child
		}
		n = child
	}
	return n
}

func merge(ctx context.Context, layers []func() (io.ReadCloser, error), dst string, lim Limits) (Stats, error) {
	if len(layers) == 0 {
		return Stats{}, fmt.Errorf("merge: no layers: %w", errdefs.ErrInvalidArgument)
	}
	var st Stats
	root := newDir(nil)
	for i, open := range layers {
		n, err := applyLayer(ctx, root, i, open, lim)
		st.TarBytes += n
		if err != nil {
			return st, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	w := &mergeWriter{ctx: ctx, root: root, layers: layers, lim: lim}
	if err := w.plan(); err != nil {
		return st, err
	}
	size, err := writeImage(ctx, dst, lim, w.write)
	st.TarBytes += w.tarBytes
	st.Entries = w.entries
	st.ImageSize = size
	return st, err
}

// applyLayer reads the headers of layer i and applies them to the tree:
// first its whiteouts and opaque markers (they hide only what lies below),
// then its entries in order.
func applyLayer(ctx context.Context, root *mnode, i int, open func() (io.ReadCloser, error), lim Limits) (int64, error) {
	rc, err := open()
	if err != nil {
		return 0, fmt.Errorf("opening: %w", err)
	}
	defer rc.Close()
	src := &sourceReader{r: rc}
	tr := tar.NewReader(src)
	v := newValidator(lim)
	var (
		entries []event
		indexes []int
		hides   []event
		dataEnd int64
	)
	for idx := 0; ; idx++ {
		if err := ctx.Err(); err != nil {
			return src.n, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			if !hasTrailer(src.n, dataEnd) {
				return src.n, errNoTrailer
			}
			break
		}
		if err != nil {
			return src.n, src.classify(err, fmt.Sprintf("reading tar entry %d", idx))
		}
		ev, err := v.check(idx, hdr)
		if err != nil {
			return src.n, err
		}
		// Skip the data here rather than in Next, to know where it ends.
		if _, err := io.Copy(io.Discard, ctxReader{ctx, tr}); err != nil {
			if ctx.Err() != nil {
				return src.n, err
			}
			return src.n, fmt.Errorf("entry %d %q: %w", idx, hdr.Name, src.classify(err, "reading file data"))
		}
		dataEnd = src.n
		switch ev.kind {
		case evEntry:
			entries = append(entries, ev)
			indexes = append(indexes, idx)
		case evWhiteout, evOpaque:
			hides = append(hides, ev)
		}
	}
	if err := drainTrailer(src); err != nil {
		return src.n, err
	}

	for _, ev := range hides {
		n := root.lookup(ev.path)
		switch {
		case n == nil:
		case ev.kind == evOpaque:
			if n.isDir() {
				clear(n.children)
			}
		default:
			dir, base := splitPath(ev.path)
			if d := root.lookup(dir); d != nil && d.isDir() {
				delete(d.children, base)
			}
		}
	}
	for k, ev := range entries {
		parent := root.parentDir(ev.path)
		_, base := splitPath(ev.path)
		existing := parent.children[base]
		switch ev.hdr.Typeflag {
		case tar.TypeDir:
			if existing != nil && existing.isDir() {
				existing.hdr = ev.hdr // the highest layer's metadata wins
			} else {
				parent.children[base] = newDir(ev.hdr)
			}
		case tar.TypeLink:
			// The validator made sure the target is an earlier non-directory
			// entry of this layer, so it is in the tree.
			t := root.lookup(ev.hdr.Linkname)
			if t == nil || t.obj == nil {
				return src.n, entryError(indexes[k], ev.path, "hardlink target %q vanished", ev.hdr.Linkname)
			}
			parent.children[base] = &mnode{obj: t.obj}
		default:
			parent.children[base] = &mnode{obj: &object{hdr: ev.hdr, layer: i, index: indexes[k]}}
		}
	}
	return src.n, nil
}

// mergeWriter streams the merged tree as one tar.
type mergeWriter struct {
	ctx      context.Context
	root     *mnode
	layers   []func() (io.ReadCloser, error)
	lim      Limits
	entries  int
	tarBytes int64

	// Filled by plan.
	order []planned         // directories and data-less objects, parents first
	data  []map[int]*object // per layer: header ordinal → object whose data it holds
	links []planned         // extra names of hardlinked objects
}

type planned struct {
	path string
	node *mnode
}

// plan walks the tree in name order, picks the first path of every object as
// the one carrying its data, and checks the limits of the merged image.
func (w *mergeWriter) plan() error {
	w.data = make([]map[int]*object, len(w.layers))
	var count int
	var dataBytes int64
	var walk func(string, *mnode)
	walk = func(p string, n *mnode) {
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			c := n.children[name]
			cp := joinPath(p, name)
			count++
			switch {
			case c.isDir():
				w.order = append(w.order, planned{cp, c})
				walk(cp, c)
			case c.obj.primary != "":
				w.links = append(w.links, planned{cp, c})
			default:
				c.obj.primary = cp
				if c.obj.hdr.Typeflag == tar.TypeReg && c.obj.hdr.Size > 0 {
					dataBytes += (c.obj.hdr.Size + blockSize - 1) &^ (blockSize - 1)
					m := w.data[c.obj.layer]
					if m == nil {
						m = make(map[int]*object)
						w.data[c.obj.layer] = m
					}
					m[c.obj.index] = c.obj
				} else {
					w.order = append(w.order, planned{cp, c})
				}
			}
		}
	}
	walk("", w.root)
	if count > w.lim.MaxEntries {
		return fmt.Errorf("merged view has %d entries, more than %d: %w", count, w.lim.MaxEntries, errdefs.ErrInvalidArgument)
	}
	if dataBytes > w.lim.MaxImageSize {
		return fmt.Errorf("merged data of %d bytes exceeds the image size limit of %d: %w", dataBytes, w.lim.MaxImageSize, errdefs.ErrInvalidArgument)
	}
	return nil
}

// implicitDir is the metadata of a directory no layer described, as
// containerd's archive would create it.
var implicitDir = tar.Header{Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX}

func (w *mergeWriter) write(out io.Writer, last *string) error {
	tw := tar.NewWriter(out)
	put := func(p string, hdr *tar.Header) error {
		h := *hdr
		h.Name = p
		*last = p
		w.entries++
		return tw.WriteHeader(&h)
	}
	for _, e := range w.order {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		hdr := e.node.hdr
		if !e.node.isDir() {
			hdr = e.node.obj.hdr
		} else if hdr == nil {
			hdr = &implicitDir
		}
		if err := put(e.path, hdr); err != nil {
			return err
		}
	}
	for i, objs := range w.data {
		if len(objs) == 0 {
			continue
		}
		if err := w.copyData(tw, i, objs, put); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	for _, e := range w.links {
		if err := put(e.path, &tar.Header{Typeflag: tar.TypeLink, Linkname: e.node.obj.primary, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	return tw.Close()
}

// copyData re-reads layer i and writes the files whose data it holds.
func (w *mergeWriter) copyData(tw *tar.Writer, i int, objs map[int]*object, put func(string, *tar.Header) error) error {
	rc, err := w.layers[i]()
	if err != nil {
		return fmt.Errorf("re-opening: %w", err)
	}
	defer rc.Close()
	src := &sourceReader{r: rc}
	defer func() { w.tarBytes += src.n }()
	tr := tar.NewReader(src)
	left := len(objs)
	for idx := 0; left > 0; idx++ {
		hdr, err := tr.Next()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return src.classify(err, fmt.Sprintf("re-reading tar entry %d", idx))
		}
		obj := objs[idx]
		if obj == nil {
			continue
		}
		left--
		// The opener must return the same stream every time.
		if p, _ := cleanName(hdr.Name); p != obj.hdr.Name || hdr.Size != obj.hdr.Size {
			return fmt.Errorf("entry %d %q changed between reads: %w", idx, hdr.Name, errdefs.ErrFailedPrecondition)
		}
		if err := put(obj.primary, obj.hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, ctxReader{w.ctx, tr}); err != nil {
			if errors.Is(err, errConverterDone) || w.ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("entry %d %q: %w", idx, hdr.Name, src.classify(err, "reading file data"))
		}
	}
	return nil
}
