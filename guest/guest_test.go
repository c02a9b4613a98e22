package guest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/guest/cpio"
	"github.com/vz-shim/containerd-shim-vz/guest/internal/fake"
)

const release = "6.1.0-99-amd64"

// bzImage is enough of one to pass for it.
func bzImage() []byte {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	return b
}

func arm64Image() []byte {
	b := make([]byte, 0x400)
	copy(b[0x38:], "ARM\x64")
	return b
}

// modules of the fake kernel package. In package (tar) order: failover
// comes before virtio_net, which needs it; quirk, which exports nothing
// (so its file is not kept on the first read), before lonely, which needs it.
var (
	modQuirk    = fake.Module([]string{"name=quirk"}, false)
	modFailover = fake.Module([]string{"name=failover"}, true)
	modNet      = fake.Module([]string{"name=virtio_net", "depends=failover,virtio"}, false)
	modVirtio   = fake.Module([]string{"name=virtio"}, true)
	modLonely   = fake.Module([]string{"name=lonely", "depends=quirk", "softdep=pre: crc32c"}, false)
	modZ        = fake.Module([]string{"name=zmod", "alias=crc32c"}, false)
	modJunk     = fake.Module([]string{"name=junk", "depends=virtio"}, false)
)

func kernelFiles(t *testing.T, modDir, config string) []fake.File {
	t.Helper()
	zmod, err := fake.Compress(".xz", modZ)
	if err != nil {
		t.Fatal(err)
	}
	m := modDir + "/" + release + "/"
	return []fake.File{
		{Name: "boot/"},
		{Name: "boot/config-" + release, Data: []byte(config)},
		{Name: "boot/vmlinuz-" + release, Data: bzImage()},
		{Name: m + "kernel/a/quirk.ko", Data: modQuirk},
		{Name: m + "kernel/drivers/core/failover.ko", Data: modFailover},
		{Name: m + "kernel/drivers/net/virtio_net.ko", Data: modNet},
		{Name: m + "kernel/drivers/virtio/virtio.ko", Data: modVirtio},
		{Name: m + "kernel/fs/lonely.ko", Data: modLonely},
		{Name: m + "kernel/fs/zmod.ko.xz", Data: zmod},
		{Name: m + "kernel/sound/junk.ko", Data: modJunk},
		{Name: m + "modules.builtin", Data: []byte("kernel/fs/overlayfs/overlay.ko\n")},
		{Name: m + "modules.order", Data: []byte("kernel/fs/zmod.ko\nkernel/drivers/net/virtio_net.ko\n")},
	}
}

const decompressXZ = "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n"

var wanted = []string{"virtio_net", "lonely", "zmod", "overlay"}

func writeDeb(t *testing.T, files []fake.File) string {
	t.Helper()
	pkg, err := fake.Deb(".xz", files)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "linux-image-"+release+"_1_amd64.deb")
	if err := os.WriteFile(p, pkg, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadKernelDeb(t *testing.T) {
	for _, modDir := range []string{"lib/modules", "usr/lib/modules"} {
		t.Run(modDir, func(t *testing.T) {
			k, err := ReadKernelDeb(writeDeb(t, kernelFiles(t, modDir, decompressXZ)), "amd64", wanted)
			if err != nil {
				t.Fatal(err)
			}
			if k.Release != release || !bytes.Equal(k.Image, bzImage()) {
				t.Errorf("kernel %q (%d bytes), want %q and the package's vmlinuz", k.Release, len(k.Image), release)
			}
			zmod, _ := fake.Compress(".xz", modZ)
			want := []struct {
				path string
				data []byte
			}{
				{"kernel/drivers/core/failover.ko", modFailover},
				{"kernel/drivers/virtio/virtio.ko", modVirtio},
				{"kernel/drivers/net/virtio_net.ko", modNet},
				{"kernel/a/quirk.ko", modQuirk},
				{"kernel/fs/lonely.ko", modLonely},
				// The kernel decompresses xz modules itself: kept as shipped.
				{"kernel/fs/zmod.ko.xz", zmod},
			}
			if len(k.Modules) != len(want) {
				t.Fatalf("modules %v, want %d", modNames(k.Modules), len(want))
			}
			for i, w := range want {
				if m := k.Modules[i]; m.Path != w.path || !bytes.Equal(m.Data, w.data) {
					t.Errorf("module %d: %s (%d bytes), want %s with the package's bytes", i, m.Path, len(m.Data), w.path)
				}
			}
			if !reflect.DeepEqual(k.Builtin, []string{"overlay"}) {
				t.Errorf("Builtin = %v, want [overlay]", k.Builtin)
			}
			if s := k.Softdeps(); len(s) != 0 {
				t.Errorf("Softdeps = %v, want none (zmod provides crc32c)", s)
			}
		})
	}
}

func TestReadKernelDebDecompressesModules(t *testing.T) {
	// No in-kernel xz decompression: the guest gets the plain module.
	k, err := ReadKernelDeb(writeDeb(t, kernelFiles(t, "lib/modules", "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_ZSTD=y\n")), "amd64", []string{"zmod"})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Modules) != 1 || k.Modules[0].Path != "kernel/fs/zmod.ko" || !bytes.Equal(k.Modules[0].Data, modZ) {
		t.Errorf("modules %v, want zmod decompressed as kernel/fs/zmod.ko", modNames(k.Modules))
	}
}

func TestReadKernelDebErrors(t *testing.T) {
	files := kernelFiles(t, "lib/modules", decompressXZ)
	for _, tc := range []struct {
		name  string
		files []fake.File
		arch  string
		mods  []string
		want  string
	}{
		{"unknown module", files, "amd64", []string{"nosuch"}, "nosuch: neither a module file nor built into the kernel"},
		{"wrong arch", files, "arm64", nil, "not an arm64 Image"},
		{"no kernel", files[3:], "amd64", nil, "not a kernel package"},
		{"modules of another kernel", append(files[:3:3], fake.File{Name: "lib/modules/5.10.0-1-amd64/kernel/a.ko", Data: modQuirk}), "amd64", nil, "modules for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadKernelDeb(writeDeb(t, tc.files), tc.arch, tc.mods)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func modNames(mods []ModuleFile) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Path)
	}
	return out
}

func TestKernelImage(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(arm64Image())
	zw.Close()
	for _, tc := range []struct {
		name, arch string
		in, want   []byte
	}{
		{"bzImage", "amd64", bzImage(), bzImage()},
		{"arm64 Image", "arm64", arm64Image(), arm64Image()},
		{"gzip arm64 Image", "arm64", gz.Bytes(), arm64Image()},
		{"arm64 Image for amd64", "amd64", arm64Image(), nil},
		{"bzImage for arm64", "arm64", bzImage(), nil},
		{"riscv64", "riscv64", bzImage(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bootImage(tc.arch, tc.in)
			if tc.want == nil {
				if err == nil {
					t.Error("no error")
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Errorf("bootImage: %d bytes, %v; want the uncompressed image", len(got), err)
			}
		})
	}
}

func TestReadStatic(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	static := write("static", fake.ELF(elf.EM_X86_64, map[string][]byte{".text": {0}}, false))
	dynamic := write("dynamic", fake.ELF(elf.EM_X86_64, map[string][]byte{".interp": []byte("/lib64/ld-linux-x86-64.so.2\x00")}, true))
	if _, err := readStatic(static, "amd64"); err != nil {
		t.Errorf("static amd64 binary: %v", err)
	}
	if _, err := readStatic(static, "arm64"); err == nil || !strings.Contains(err.Error(), "not arm64") {
		t.Errorf("amd64 binary for arm64: %v", err)
	}
	if _, err := readStatic(dynamic, "amd64"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic binary: %v", err)
	}
	if _, err := readStatic(write("script", []byte("#!/bin/sh\n")), "amd64"); err == nil {
		t.Error("shell script: no error")
	}
}

type listed struct {
	name  string
	mode  uint32
	size  int64
	major uint32
	minor uint32
}

func list(t *testing.T, initrd []byte) ([]listed, map[string][]byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(zr)
	var out []listed
	data := make(map[string][]byte)
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out, data
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime != 1700000000 || h.UID != 0 || h.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want 1700000000, 0, 0", h.Name, h.ModTime, h.UID, h.GID)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		data[h.Name] = b
		out = append(out, listed{h.Name, h.Mode, h.Size, h.Devmajor, h.Devminor})
	}
}

func buildFake(t *testing.T, deb string) *Image {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "vz-agent")
	runc := filepath.Join(dir, "runc")
	os.WriteFile(agent, fake.ELF(elf.EM_X86_64, map[string][]byte{".text": []byte("agent")}, false), 0o755)
	os.WriteFile(runc, fake.ELF(elf.EM_X86_64, map[string][]byte{".text": []byte("runc")}, false), 0o755)
	// lonely is an optional module: in the image, and named in modules.optional.
	img, err := Build(Config{
		Arch: "amd64", KernelDeb: deb, Agent: agent, Runc: runc, ModTime: 1700000000,
		Modules: []string{"virtio_net", "zmod", "overlay"}, Optional: map[string][]string{"extra": {"lonely"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuild(t *testing.T) {
	img := buildFake(t, writeDeb(t, kernelFiles(t, "lib/modules", decompressXZ)))
	if !bytes.Equal(img.Kernel.Image, bzImage()) {
		t.Error("the kernel is not the package's vmlinuz")
	}
	// gzip header: no FNAME flag, MTIME 0.
	if h := img.Initrd; len(h) < 10 || h[3] != 0 || !bytes.Equal(h[4:8], []byte{0, 0, 0, 0}) {
		t.Errorf("gzip header % x: want no flags and a zero mtime", img.Initrd[:10])
	}
	entries, data := list(t, img.Initrd)
	var size int64
	for _, e := range entries {
		size += e.size
	}
	if img.InitrdSize < size {
		t.Errorf("InitrdSize %d is less than the data it holds (%d)", img.InitrdSize, size)
	}
	md := "lib/modules/" + release
	dir, reg := uint32(cpio.TypeDir|0o755), uint32(cpio.TypeReg|0o644)
	want := []listed{
		{"dev", dir, 0, 0, 0},
		{"dev/console", cpio.TypeChar | 0o600, 0, 5, 1},
		{"dev/null", cpio.TypeChar | 0o666, 0, 1, 3},
		{"etc", dir, 0, 0, 0},
		{"init", cpio.TypeReg | 0o755, int64(len(data["init"])), 0, 0},
		{"lib", dir, 0, 0, 0},
		{"lib/modules", dir, 0, 0, 0},
		{md, dir, 0, 0, 0},
		{md + "/kernel", dir, 0, 0, 0},
		{md + "/kernel/a", dir, 0, 0, 0},
		{md + "/kernel/a/quirk.ko", reg, int64(len(modQuirk)), 0, 0},
		{md + "/kernel/drivers", dir, 0, 0, 0},
		{md + "/kernel/drivers/core", dir, 0, 0, 0},
		{md + "/kernel/drivers/core/failover.ko", reg, int64(len(modFailover)), 0, 0},
		{md + "/kernel/drivers/net", dir, 0, 0, 0},
		{md + "/kernel/drivers/net/virtio_net.ko", reg, int64(len(modNet)), 0, 0},
		{md + "/kernel/drivers/virtio", dir, 0, 0, 0},
		{md + "/kernel/drivers/virtio/virtio.ko", reg, int64(len(modVirtio)), 0, 0},
		{md + "/kernel/fs", dir, 0, 0, 0},
		{md + "/kernel/fs/lonely.ko", reg, int64(len(modLonely)), 0, 0},
		{md + "/kernel/fs/zmod.ko.xz", reg, int64(len(data[md+"/kernel/fs/zmod.ko.xz"])), 0, 0},
		{md + "/modules.dep", reg, int64(len(data[md+"/modules.dep"])), 0, 0},
		{md + "/modules.optional", reg, int64(len("extra: lonely\n")), 0, 0},
		{"mnt", dir, 0, 0, 0},
		{"proc", dir, 0, 0, 0},
		{"run", dir, 0, 0, 0},
		{"sys", dir, 0, 0, 0},
		{"tmp", cpio.TypeDir | 0o1777, 0, 0, 0},
		{"usr", dir, 0, 0, 0},
		{"usr/bin", dir, 0, 0, 0},
		{"usr/bin/runc", cpio.TypeReg | 0o755, int64(len(data["usr/bin/runc"])), 0, 0},
	}
	if !reflect.DeepEqual(entries, want) {
		t.Errorf("initramfs entries:\n got %v\nwant %v", entries, want)
	}
	if got := string(data[md+"/modules.optional"]); got != "extra: lonely\n" {
		t.Errorf("modules.optional: %q", got)
	}
	if !bytes.Contains(data["init"], []byte("agent")) || !bytes.Contains(data["usr/bin/runc"], []byte("runc")) {
		t.Error("/init or /usr/bin/runc is not the binary given")
	}
	wantDep := `kernel/fs/zmod.ko.xz:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/core/failover.ko
kernel/a/quirk.ko:
kernel/drivers/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/fs/lonely.ko: kernel/a/quirk.ko
`
	if got := string(data[md+"/modules.dep"]); got != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", got, wantDep)
	}
}

// Equal inputs give equal bytes, whatever the temporary paths.
func TestBuildReproducible(t *testing.T) {
	files := kernelFiles(t, "lib/modules", decompressXZ)
	a := buildFake(t, writeDeb(t, files))
	b := buildFake(t, writeDeb(t, files))
	if sha256.Sum256(a.Initrd) != sha256.Sum256(b.Initrd) {
		t.Error("two initrds built from the same inputs differ")
	}
	if sha256.Sum256(a.Kernel.Image) != sha256.Sum256(b.Kernel.Image) {
		t.Error("two kernels built from the same inputs differ")
	}
}

// The archive does not depend on the order the files were added in.
func TestInitramfsOrderIndependent(t *testing.T) {
	add := func(fs *Initramfs, i int) {
		var err error
		switch i {
		case 0:
			err = fs.AddFile("usr/bin/runc", 0o755, []byte("runc"))
		case 1:
			err = fs.AddDir("usr", 0o700)
		case 2:
			err = fs.AddCharDevice("dev/null", 0o666, 1, 3)
		case 3:
			err = fs.AddSymlink("bin", "usr/bin")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var a, b Initramfs
	for i := 0; i < 4; i++ {
		add(&a, i)
		add(&b, 3-i)
	}
	var ab, bb bytes.Buffer
	if _, err := a.WriteGzip(&ab); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteGzip(&bb); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab.Bytes(), bb.Bytes()) {
		t.Error("the same files added in another order give other bytes")
	}
	// The explicit mode of usr wins over the one it got as runc's parent.
	zr, _ := gzip.NewReader(&ab)
	r := cpio.NewReader(zr)
	for {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("no usr directory: %v", err)
		}
		if h.Name == "usr" {
			if h.Mode != cpio.TypeDir|0o700 {
				t.Errorf("usr mode %#o, want %#o", h.Mode, cpio.TypeDir|0o700)
			}
			break
		}
	}
}

func TestInitramfsErrors(t *testing.T) {
	var fs Initramfs
	if err := fs.AddFile("init", 0o755, nil); err != nil {
		t.Fatal(err)
	}
	if err := fs.AddFile("init", 0o755, nil); err == nil {
		t.Error("a file added twice: no error")
	}
	if err := fs.AddFile("init/x", 0o644, nil); err == nil {
		t.Error("a file under a file: no error")
	}
	if err := fs.AddFile("bad", 0o10644, nil); err == nil {
		t.Error("type bits in perm: no error")
	}
	if err := fs.AddDir("/", 0o755); err == nil {
		t.Error("adding the root: no error")
	}
}

// A kernel with everything built in (hack/kernel.sh): its release comes from the banner (not from
// a printf template of it), the initramfs is a plain cpio with no modules directory when asked,
// and a config with modules enabled is refused.
func TestBuildKernelImage(t *testing.T) {
	dir := t.TempDir()
	img := arm64Image()
	img = append(img, "Linux version %s (%s)\x00junk Linux version 6.12.117-vz (containerd-vz@containerd-vz) #1 SMP\x00"...)
	kernel := filepath.Join(dir, "Image")
	config := filepath.Join(dir, "config")
	agent := filepath.Join(dir, "vz-agent")
	runc := filepath.Join(dir, "runc")
	for f, b := range map[string][]byte{
		kernel: img,
		config: []byte("CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n"),
		agent:  fake.ELF(elf.EM_AARCH64, map[string][]byte{".text": []byte("agent")}, false),
		runc:   fake.ELF(elf.EM_AARCH64, map[string][]byte{".text": []byte("runc")}, false),
	} {
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Arch: "arm64", KernelImage: kernel, KernelConfig: config, Agent: agent, Runc: runc, Uncompressed: true}
	got, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kernel.Release != "6.12.117-vz" || len(got.Kernel.Modules) != 0 {
		t.Errorf("release %q, %d modules; want 6.12.117-vz and none", got.Kernel.Release, len(got.Kernel.Modules))
	}
	if !bytes.HasPrefix(got.Initrd, []byte("070701")) || int64(len(got.Initrd)) != got.InitrdSize {
		t.Errorf("initrd starts % x (%d bytes, %d uncompressed): want a plain newc cpio", got.Initrd[:6], len(got.Initrd), got.InitrdSize)
	}
	r := cpio.NewReader(bytes.NewReader(got.Initrd))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "lib/modules") {
			t.Errorf("%s in the initramfs of a kernel without modules", h.Name)
		}
	}

	// The same as a root disk: an ext4 image that e2fsprogs finds whole, /init the agent.
	rootCfg := cfg
	rootCfg.RootFS = true
	got, err = Build(rootCfg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Initrd != nil || len(got.RootFS) < 1024+2 || binary.LittleEndian.Uint16(got.RootFS[1024+0x38:]) != 0xef53 {
		t.Errorf("root disk of %d bytes (initrd %d bytes): want an ext4 image and no initrd", len(got.RootFS), len(got.Initrd))
	}
	checkExt4(t, got.RootFS, map[string][]byte{"/init": fileBytes(t, agent), "/usr/bin/runc": fileBytes(t, runc)})
	again, err := Build(rootCfg)
	if err != nil || !bytes.Equal(again.RootFS, got.RootFS) {
		t.Errorf("root disk not reproducible (err %v)", err)
	}
	deb := rootCfg
	deb.KernelImage, deb.KernelDeb = "", "x.deb"
	if _, err := Build(deb); err == nil || !strings.Contains(err.Error(), "root disk") {
		t.Errorf("a root disk for a kernel package: %v, want refused", err)
	}

	os.WriteFile(config, []byte("CONFIG_MODULES=y\n"), 0o644)
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "CONFIG_MODULES=y") {
		t.Errorf("a config with modules: %v, want refused", err)
	}
	cfg.KernelDeb = "x.deb"
	if _, err := Build(cfg); err == nil {
		t.Error("both a package and an image: no error")
	}
	os.WriteFile(kernel, arm64Image(), 0o644)
	cfg.KernelDeb, cfg.KernelConfig = "", ""
	if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "banner") {
		t.Errorf("an image without a banner: %v, want an error naming the banner", err)
	}
}

func fileBytes(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkExt4 runs e2fsck on an ext4 image and reads files back with debugfs (e2fsprogs, which
// CI has; the test says so loudly when it does not).
func checkExt4(t *testing.T, img []byte, files map[string][]byte) {
	t.Helper()
	e2fsck, err := exec.LookPath("e2fsck")
	if err != nil {
		e2fsck = "/usr/sbin/e2fsck"
	}
	debugfs := filepath.Join(filepath.Dir(e2fsck), "debugfs")
	if _, err := os.Stat(debugfs); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no e2fsprogs (%s): CI must have it", debugfs)
		}
		t.Logf("!!! NOT CHECKING THE ROOT DISK WITH E2FSPROGS: no %s (apt-get install e2fsprogs)", debugfs)
		return
	}
	path := filepath.Join(t.TempDir(), "rootfs")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(e2fsck, "-fn", path).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	for name, want := range files {
		got, err := exec.Command(debugfs, "-R", "cat "+name, path).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the root disk: %d bytes (%v), want the %d bytes given", name, len(got), err, len(want))
		}
	}
}
