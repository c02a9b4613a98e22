package kmod

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/guest/internal/fake"
)

func TestParseInfo(t *testing.T) {
	data := fake.Module([]string{
		"license=GPL",
		"name=ext4",
		"depends=mbcache,jbd2,crc16",
		"softdep=pre: crc32c post: foo-bar",
		"alias=fs-ext4",
		"alias=ext3",
		"vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
	}, true)
	got, err := ParseInfo("kernel/fs/ext4/ext4.ko", data)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{
		Name:     "ext4",
		Depends:  []string{"mbcache", "jbd2", "crc16"},
		Softdeps: []string{"crc32c", "foo-bar"},
		Aliases:  []string{"fs-ext4", "ext3"},
		Exports:  true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseInfo:\n got %+v\nwant %+v", got, want)
	}
}

func TestParseInfoNameFromFile(t *testing.T) {
	got, err := ParseInfo("kernel/drivers/char/hw_random/virtio-rng.ko", fake.Module([]string{"depends="}, false))
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "virtio_rng" || len(got.Depends) != 0 || got.Exports {
		t.Errorf("ParseInfo = %+v, want name virtio_rng, no depends, no exports", got)
	}
}

func TestParseInfoErrors(t *testing.T) {
	if _, err := ParseInfo("x.ko", []byte("not an ELF file")); err == nil {
		t.Error("ParseInfo of a non-ELF file: no error")
	}
	noModinfo := fake.ELF(0x3e, map[string][]byte{".text": {0}}, false)
	if _, err := ParseInfo("x.ko", noModinfo); err == nil || !strings.Contains(err.Error(), ".modinfo") {
		t.Errorf("ParseInfo without .modinfo: %v, want an error naming .modinfo", err)
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"kernel/fs/ext4/ext4.ko.xz":                   "ext4",
		"kernel/arch/x86/crypto/crc32c-intel.ko.zst":  "crc32c_intel",
		"virtio-pci": "virtio_pci",
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko": "vmw_vsock_virtio_transport",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseBuiltin(t *testing.T) {
	got, err := ParseBuiltin(strings.NewReader("kernel/drivers/tty/serial/8250/8250.ko\n\nkernel/fs/proc-fs.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"8250": true, "proc_fs": true}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseBuiltin = %v, want %v", got, want)
	}
}

// A kernel's worth of modules, shaped like Debian's.
var kernel = map[string]Module{
	"virtio_ring": {Path: "kernel/drivers/virtio/virtio_ring.ko", Info: Info{Name: "virtio_ring"}},
	"virtio":      {Path: "kernel/drivers/virtio/virtio.ko", Info: Info{Name: "virtio", Depends: []string{"virtio_ring"}}},
	"virtio_blk":  {Path: "kernel/drivers/block/virtio_blk.ko", Info: Info{Name: "virtio_blk", Depends: []string{"virtio", "virtio_ring"}}},
	"crc16":       {Path: "kernel/lib/crc16.ko", Info: Info{Name: "crc16"}},
	"mbcache":     {Path: "kernel/fs/mbcache.ko", Info: Info{Name: "mbcache"}},
	"jbd2":        {Path: "kernel/fs/jbd2/jbd2.ko", Info: Info{Name: "jbd2"}},
	"ext4":        {Path: "kernel/fs/ext4/ext4.ko", Info: Info{Name: "ext4", Depends: []string{"mbcache", "jbd2", "crc16"}}},
	"unrelated":   {Path: "kernel/sound/unrelated.ko", Info: Info{Name: "unrelated"}},
}

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolve(t *testing.T) {
	got, err := Resolve(kernel, map[string]bool{"overlay": true}, []string{"virtio_blk", "ext4", "overlay", "virtio"})
	if err != nil {
		t.Fatal(err)
	}
	// Dependencies first, each once, the built-in overlay left out; ties in
	// name order.
	want := []string{"virtio_ring", "virtio", "virtio_blk", "crc16", "jbd2", "mbcache", "ext4"}
	if !reflect.DeepEqual(names(got), want) {
		t.Errorf("Resolve = %v, want %v", names(got), want)
	}
}

func TestResolveErrors(t *testing.T) {
	if _, err := Resolve(kernel, nil, []string{"nosuch"}); err == nil || !strings.Contains(err.Error(), "neither a module file nor built into the kernel") {
		t.Errorf("unknown module: %v", err)
	}
	broken := map[string]Module{
		"a": {Path: "a.ko", Info: Info{Name: "a", Depends: []string{"b"}}},
	}
	if _, err := Resolve(broken, nil, []string{"a"}); err == nil || !strings.Contains(err.Error(), "module b (needed by a): not found") {
		t.Errorf("missing dependency: %v", err)
	}
	cycle := map[string]Module{
		"a": {Path: "a.ko", Info: Info{Name: "a", Depends: []string{"b"}}},
		"b": {Path: "b.ko", Info: Info{Name: "b", Depends: []string{"a"}}},
	}
	if _, err := Resolve(cycle, nil, []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle: a -> b -> a") {
		t.Errorf("cycle: %v", err)
	}
}

func TestWriteDep(t *testing.T) {
	mods, err := Resolve(kernel, nil, []string{"virtio_blk", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	order := []string{"kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/drivers/block/virtio_blk.ko"}
	var buf bytes.Buffer
	if err := WriteDep(&buf, mods, order); err != nil {
		t.Fatal(err)
	}
	// Lines in modules.order order, then by path; on each line every
	// dependency, the one loaded first last, as depmod writes them.
	want := `kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
`
	if buf.String() != want {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestWriteDepTransitive(t *testing.T) {
	chain := map[string]Module{
		"a": {Path: "a.ko", Info: Info{Name: "a", Depends: []string{"b"}}},
		"b": {Path: "b.ko", Info: Info{Name: "b", Depends: []string{"c"}}},
		"c": {Path: "c.ko", Info: Info{Name: "c"}},
	}
	mods, err := Resolve(chain, nil, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteDep(&buf, mods, nil); err != nil {
		t.Fatal(err)
	}
	if want := "a.ko: b.ko c.ko\nb.ko: c.ko\nc.ko:\n"; buf.String() != want {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestWriteDepIncomplete(t *testing.T) {
	mods := []Module{{Path: "a.ko", Info: Info{Name: "a", Depends: []string{"b"}}}}
	if err := WriteDep(&bytes.Buffer{}, mods, nil); err == nil {
		t.Error("WriteDep with a dependency missing from the set: no error")
	}
}

// A module that another's soft dependency names comes before it in modules.dep, whatever
// modules.order says: libcrc32c's init fails without a "crc32c" provider loaded.
func TestWriteDepSoftdepsFirst(t *testing.T) {
	mods := []Module{
		{Path: "kernel/lib/libcrc32c.ko", Info: Info{Name: "libcrc32c", Softdeps: []string{"crc32c"}, Exports: true}},
		{Path: "kernel/fs/xfs/xfs.ko", Info: Info{Name: "xfs", Depends: []string{"libcrc32c"}}},
		{Path: "kernel/crypto/crc32c_generic.ko", Info: Info{Name: "crc32c_generic", Aliases: []string{"crc32c"}}},
	}
	order := []string{"kernel/lib/libcrc32c.ko", "kernel/fs/xfs/xfs.ko", "kernel/crypto/crc32c_generic.ko"}
	var b strings.Builder
	if err := WriteDep(&b, mods, order); err != nil {
		t.Fatal(err)
	}
	want := "kernel/crypto/crc32c_generic.ko:\nkernel/lib/libcrc32c.ko:\nkernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n"
	if b.String() != want {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", b.String(), want)
	}
}
