// Package testimage writes the small busybox image the tests and make run
// use: no registry is reachable from these machines, so images are built.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest needs the hash registered
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// imageTime is the fixed time of every file and of the image config: same input, same digests.
var imageTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// WriteBusybox writes a one-layer image named name as an OCI image layout tar at out: the
// static busybox at /bin/busybox, a symlink to it for each of its applets, /etc/passwd and
// /etc/group, and the directories a container runtime mounts over. The image is for the host's
// architecture, and so must busybox be.
func WriteBusybox(out, busybox, name string) error {
	return WriteBusyboxArch(out, busybox, name, runtime.GOARCH)
}

// WriteBusyboxArch is WriteBusybox for a linux/arch image (amd64 or arm64): busybox must be a
// static busybox of that architecture. One of another architecture cannot run here to list its
// applets, so their names are read from the binary and each is linked in /bin.
func WriteBusyboxArch(out, busybox, name, arch string) error {
	return writeBusybox(out, busybox, name, arch, []string{"sh"})
}

// WriteBusyboxCmd is WriteBusybox with cmd as the image's command (a pod's sandbox image wants
// one that runs until it is stopped).
func WriteBusyboxCmd(out, busybox, name string, cmd []string) error {
	return writeBusybox(out, busybox, name, runtime.GOARCH, cmd)
}

func writeBusybox(out, busybox, name, arch string, cmd []string) error {
	if err := checkArch(busybox, arch); err != nil {
		return err
	}
	var links map[string]bool
	var err error
	if arch == runtime.GOARCH {
		links, err = listFull(busybox)
	} else {
		links, err = appletTable(busybox)
	}
	if err != nil {
		return err
	}
	layer, err := busyboxLayer(busybox, links)
	if err != nil {
		return err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layer); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}

	platform := ocispec.Platform{OS: "linux", Architecture: arch}
	config, err := json.Marshal(ocispec.Image{
		Created:  &imageTime,
		Platform: platform,
		Config: ocispec.ImageConfig{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: cmd,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}},
		History: []ocispec.History{{
			Created:   &imageTime,
			CreatedBy: "containerd-shim-vz integration tests: busybox " + busybox,
		}},
	})
	if err != nil {
		return err
	}
	blobs := map[digest.Digest][]byte{}
	add := func(mediaType string, b []byte) ocispec.Descriptor {
		dgst := digest.FromBytes(b)
		blobs[dgst] = b
		return ocispec.Descriptor{MediaType: mediaType, Digest: dgst, Size: int64(len(b))}
	}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    add(ocispec.MediaTypeImageConfig, config),
		Layers:    []ocispec.Descriptor{add(ocispec.MediaTypeImageLayerGzip, gz.Bytes())},
	})
	if err != nil {
		return err
	}
	mdesc := add(ocispec.MediaTypeImageManifest, manifest)
	mdesc.Platform = &platform
	mdesc.Annotations = map[string]string{
		"io.containerd.image.name": name,
		ocispec.AnnotationRefName:  name[strings.LastIndex(name, ":")+1:],
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{mdesc},
	})
	if err != nil {
		return err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layout},
		{ocispec.ImageIndexFile, index},
	}
	dgsts := make([]digest.Digest, 0, len(blobs))
	for dgst := range blobs {
		dgsts = append(dgsts, dgst)
	}
	sort.Slice(dgsts, func(i, j int) bool { return dgsts[i] < dgsts[j] })
	for _, dgst := range dgsts {
		files = append(files, struct {
			name string
			data []byte
		}{path.Join("blobs", dgst.Algorithm().String(), dgst.Encoded()), blobs[dgst]})
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: imageTime}); err != nil {
			return err
		}
	}
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: imageTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// elfMachines are the ELF machines of the architectures an image can be for.
var elfMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// checkArch fails unless busybox is an ELF executable for arch: an image whose config says one
// architecture and whose binary is of another fails only when a container starts, far from here.
func checkArch(busybox, arch string) error {
	want, ok := elfMachines[arch]
	if !ok {
		return fmt.Errorf("image architecture %q: want amd64 or arm64", arch)
	}
	f, err := elf.Open(busybox)
	if err != nil {
		return fmt.Errorf("busybox for %s: %w", arch, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("busybox for %s: %s is for %s, want %s", arch, busybox, f.Machine, want)
	}
	return nil
}

// listFull asks busybox for its applets with their install paths: "bin/sh", "usr/bin/head", ...
func listFull(busybox string) (map[string]bool, error) {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	links := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		l = strings.TrimPrefix(l, "/")
		if strings.Contains(l, "/") && l != "bin/busybox" {
			links[l] = true
		}
	}
	return links, nil
}

// appletTableStart is how busybox's applet_names table begins: its names are sorted and NUL
// separated, and "[" and "[[" (test) sort first. The install paths are packed in bit fields
// that are not worth decoding for a test image: every applet goes to /bin.
var appletTableStart = []byte("\x00[\x00[[\x00")

// appletTable reads the applet names from the busybox binary, as "bin/<name>" links.
func appletTable(busybox string) (map[string]bool, error) {
	b, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	i := bytes.Index(b, appletTableStart)
	if i < 0 {
		return nil, fmt.Errorf("%s: no applet name table found", busybox)
	}
	table := b[i+1:]
	end := bytes.Index(table, []byte("\x00\x00")) // the table ends with an empty name
	if end < 0 {
		return nil, fmt.Errorf("%s: applet name table has no end", busybox)
	}
	links := map[string]bool{}
	prev := ""
	for _, name := range strings.Split(string(table[:end]), "\x00") {
		// Sorted and printable, or this was not the table.
		if name <= prev || strings.ContainsAny(name, "/ ") || !isPrint(name) {
			return nil, fmt.Errorf("%s: applet name table: unexpected name %q after %q", busybox, name, prev)
		}
		prev = name
		if name != "busybox" {
			links["bin/"+name] = true
		}
	}
	return links, nil
}

func isPrint(s string) bool {
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// busyboxLayer is the uncompressed layer tar of the busybox image, with a symlink to
// /bin/busybox at each path in links.
func busyboxLayer(busybox string, links map[string]bool) ([]byte, error) {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	for _, applet := range []string{"sh", "echo", "cat", "uname", "sleep", "stty", "true", "false", "head", "wc", "ps"} {
		if !links["bin/"+applet] && !links["usr/bin/"+applet] {
			return nil, fmt.Errorf("%s has no %s applet", busybox, applet)
		}
	}

	dirs := map[string]bool{"bin": true, "dev": true, "etc": true, "proc": true, "root": true,
		"sys": true, "tmp": true, "run": true, "var": true, "usr": true, "usr/bin": true, "usr/sbin": true, "sbin": true}
	for l := range links {
		for d := path.Dir(l); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range sortedKeys(dirs) {
		mode := int64(0o755)
		switch d {
		case "tmp":
			mode = 0o1777
		case "root":
			mode = 0o700
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: imageTime}); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"bin/busybox", 0o755, bb},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: imageTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	for _, l := range sortedKeys(links) {
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Name: l, Linkname: "/bin/busybox", Mode: 0o777, ModTime: imageTime}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
