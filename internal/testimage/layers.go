package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one member of a layer tar: its header and, for a regular file, its content.
// Header.Size is set from Data when the layer is written.
type Entry struct {
	Header tar.Header
	Data   []byte
}

// Compression is how a layer blob is compressed.
type Compression int

const (
	Gzip Compression = iota
	Zstd
	Uncompressed
)

// Layer is a layer as the tests build it: its tar entries in order, and how its blob is
// compressed.
type Layer struct {
	Entries     []Entry
	Compression Compression
}

// Blob is an encoded layer: the bytes a registry serves and their descriptor fields.
type Blob struct {
	MediaType string
	Data      []byte
	Digest    digest.Digest // of Data
	DiffID    digest.Digest // of the uncompressed tar
}

// Descriptor is the blob's descriptor in a manifest.
func (b Blob) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: b.MediaType, Digest: b.Digest, Size: int64(len(b.Data))}
}

// Truncated returns the blob cut to n bytes: a new digest (so a registry accepts it and
// containerd's fetch verifies it), the same DiffID (so the image config still names the whole
// tar). For a compressed blob this is a truncated stream.
func (b Blob) Truncated(n int) Blob {
	b.Data = append([]byte(nil), b.Data[:n]...)
	b.Digest = digest.FromBytes(b.Data)
	return b
}

// Tar is the layer's uncompressed tar stream. Every entry gets the fixed image time unless its
// header has one; the same layer always gives the same bytes.
func (l Layer) Tar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range l.Entries {
		hdr := e.Header
		if hdr.ModTime.IsZero() {
			hdr.ModTime = imageTime
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.Data))
		}
		if len(hdr.PAXRecords) > 0 {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", hdr.Name, err)
		}
		if len(e.Data) > 0 {
			if _, err := tw.Write(e.Data); err != nil {
				return nil, fmt.Errorf("layer entry %s: %w", hdr.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Blob encodes the layer.
func (l Layer) Blob() (Blob, error) {
	raw, err := l.Tar()
	if err != nil {
		return Blob{}, err
	}
	return compress(raw, l.Compression)
}

func compress(raw []byte, c Compression) (Blob, error) {
	b := Blob{DiffID: digest.FromBytes(raw)}
	var (
		out bytes.Buffer
		zw  io.WriteCloser
		err error
	)
	switch c {
	case Gzip:
		b.MediaType = ocispec.MediaTypeImageLayerGzip
		zw, err = gzip.NewWriterLevel(&out, gzip.BestSpeed)
	case Zstd:
		b.MediaType = ocispec.MediaTypeImageLayerZstd
		zw, err = zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	case Uncompressed:
		b.MediaType = ocispec.MediaTypeImageLayer
		out.Write(raw)
	default:
		return Blob{}, fmt.Errorf("unknown compression %d", c)
	}
	if err != nil {
		return Blob{}, err
	}
	if zw != nil {
		if _, err := zw.Write(raw); err != nil {
			return Blob{}, err
		}
		if err := zw.Close(); err != nil {
			return Blob{}, err
		}
	}
	b.Data = out.Bytes()
	b.Digest = digest.FromBytes(b.Data)
	return b, nil
}

// Image is an image ready to push: its manifest, config and layer blobs.
type Image struct {
	Manifest       []byte
	ManifestDigest digest.Digest
	Config         []byte
	ConfigDigest   digest.Digest
	Layers         []Blob
}

// ChainIDs are the chain IDs of the image's layers, bottom first: the keys of the committed
// snapshots containerd makes when it unpacks the image.
func (img *Image) ChainIDs() []digest.Digest {
	var ids []digest.Digest
	var parent digest.Digest
	for _, l := range img.Layers {
		id := l.DiffID
		if parent != "" {
			id = digest.FromString(parent.String() + " " + l.DiffID.String())
		}
		ids = append(ids, id)
		parent = id
	}
	return ids
}

// NewImage makes a linux image of the host's architecture from encoded layers, bottom first.
func NewImage(layers []Blob, createdBy string) (*Image, error) {
	return NewImageWith(layers, createdBy, ocispec.ImageConfig{
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"sh"},
	})
}

// NewImageWith is NewImage with the image's config (command, user, ports) given.
func NewImageWith(layers []Blob, createdBy string, cfg ocispec.ImageConfig) (*Image, error) {
	if len(layers) == 0 {
		return nil, errors.New("an image needs a layer")
	}
	img := &Image{Layers: layers}
	var diffIDs []digest.Digest
	var descs []ocispec.Descriptor
	for _, l := range layers {
		diffIDs = append(diffIDs, l.DiffID)
		descs = append(descs, l.Descriptor())
	}
	var err error
	img.Config, err = json.Marshal(ocispec.Image{
		Created:  &imageTime,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   cfg,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History:  []ocispec.History{{Created: &imageTime, CreatedBy: createdBy}},
	})
	if err != nil {
		return nil, err
	}
	img.ConfigDigest = digest.FromBytes(img.Config)
	img.Manifest, err = json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: img.ConfigDigest, Size: int64(len(img.Config))},
		Layers:    descs,
	})
	if err != nil {
		return nil, err
	}
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	return img, nil
}

// BuildImage encodes layers and makes an image of them.
func BuildImage(layers []Layer, createdBy string) (*Image, error) {
	blobs, err := encode(layers)
	if err != nil {
		return nil, err
	}
	return NewImage(blobs, createdBy)
}

// BuildImageWith is BuildImage with the image's config given.
func BuildImageWith(layers []Layer, createdBy string, cfg ocispec.ImageConfig) (*Image, error) {
	blobs, err := encode(layers)
	if err != nil {
		return nil, err
	}
	return NewImageWith(blobs, createdBy, cfg)
}

func encode(layers []Layer) ([]Blob, error) {
	var blobs []Blob
	for i, l := range layers {
		b, err := l.Blob()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		blobs = append(blobs, b)
	}
	return blobs, nil
}

// ReadEntries parses a layer tar back into entries.
func ReadEntries(raw []byte) ([]Entry, error) {
	var entries []Entry
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries, nil
		}
		if err != nil {
			return nil, err
		}
		e := Entry{Header: *hdr}
		if hdr.Typeflag == tar.TypeReg {
			if e.Data, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
		entries = append(entries, e)
	}
}

// BusyboxLayer is the busybox image's layer (WriteBusybox) as entries, gzip-compressed.
func BusyboxLayer(busybox string) (Layer, error) {
	links, err := listFull(busybox)
	if err != nil {
		return Layer{}, err
	}
	raw, err := busyboxLayer(busybox, links)
	if err != nil {
		return Layer{}, err
	}
	entries, err := ReadEntries(raw)
	if err != nil {
		return Layer{}, err
	}
	return Layer{Entries: entries, Compression: Gzip}, nil
}
