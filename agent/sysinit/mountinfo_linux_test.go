package sysinit

import (
	"reflect"
	"strings"
	"testing"
)

const sampleMountinfo = `1 1 0:2 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 1 0:6 / /dev rw,nosuid,relatime shared:2 master:1 - devtmpfs devtmpfs rw,size=4k,mode=755
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
30 1 0:30 / /with\040space\134x rw - tmpfs tmpfs rw
31 30 0:31 /sub /with\040space\134x/b rw - ext4 /dev/vda rw
`

func TestParseMountinfo(t *testing.T) {
	infos, err := parseMountinfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountInfo{
		{1, 1, "/", "rootfs"},
		{22, 1, "/proc", "proc"},
		{24, 1, "/dev", "devtmpfs"}, // optional fields skipped
		{26, 24, "/dev/pts", "devpts"},
		{30, 1, `/with space\x`, "tmpfs"}, // octal escapes decoded
		{31, 30, `/with space\x/b`, "ext4"},
	}
	if !reflect.DeepEqual(infos, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", infos, want)
	}

	if !isMounted(infos, "/dev", "devtmpfs") || !isMounted(infos, "/dev", "") {
		t.Error("/dev devtmpfs not found")
	}
	if isMounted(infos, "/dev", "tmpfs") || isMounted(infos, "/de", "") {
		t.Error("isMounted matched the wrong type or a prefix")
	}

	root, ok := rootMount(infos)
	if !ok || root.fstype != "rootfs" {
		t.Fatalf("rootMount = %+v, %v", root, ok)
	}
	// A mount stacked on "/" is what the process sees as its root.
	stacked, _ := parseMountinfo(strings.NewReader(sampleMountinfo + "40 1 0:40 / / rw - tmpfs tmpfs rw\n"))
	if root, _ := rootMount(stacked); root.id != 40 {
		t.Errorf("rootMount with a mount over / = %+v; want id 40", root)
	}

	for _, bad := range []string{"1 1 0:2 / / rw rootfs rootfs rw\n", "x 1 0:2 / / rw - rootfs rootfs rw\n", "1 1 0:2 / / rw -\n"} {
		if _, err := parseMountinfo(strings.NewReader(bad)); err == nil {
			t.Errorf("parseMountinfo(%q) succeeded", bad)
		}
	}
}
