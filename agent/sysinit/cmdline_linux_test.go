package sysinit

import (
	"reflect"
	"testing"
)

func TestCmdlineGet(t *testing.T) {
	const line = `BOOT_IMAGE=/vmlinuz console=ttyS0,115200 quiet ` +
		`vz.transport=serial vz.name="my box" "vz.label=a b c" ` +
		`root=PARTUUID=abc-1 empty= odd=x"y z"w foo-bar=1 dup=1 dup=2` + "\t" +
		`tab=yes -- vz.after=1 init-arg` + "\n"
	c := ParseCmdline(line)

	for _, tc := range []struct {
		key, want string
		ok        bool
	}{
		{"BOOT_IMAGE", "/vmlinuz", true},
		{"console", "ttyS0,115200", true},
		{"quiet", "", true},
		{"vz.transport", "serial", true},
		{"vz.name", "my box", true},         // key="value"
		{"vz.label", "a b c", true},         // "key=value"
		{"root", "PARTUUID=abc-1", true},    // split at the first '='
		{"empty", "", true},                 // key= is set and empty
		{"odd", `x"y z"w`, true},            // inner quotes are kept, as by the kernel
		{"foo_bar", "1", true},              // '-' and '_' are the same
		{"foo-bar", "1", true},              //
		{"dup", "2", true},                  // the last one wins
		{"tab", "yes", true},                // any whitespace separates
		{"vz.after", "", false},             // after "--": init's argv
		{"init-arg", "", false},             //
		{"missing", "", false},              //
		{"vz", "", false},                   // prefixes do not match
		{"vz.transport.x", "", false},       //
		{"VZ.TRANSPORT", "", false},         // case matters
		{"console=ttyS0,115200", "", false}, //
	} {
		got, ok := c.Get(tc.key)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Get(%q) = %q, %v; want %q, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCmdlineEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []param
	}{
		{"", nil},
		{"   \n", nil},
		{"a", []param{{key: "a"}}},
		{`a="unterminated b`, []param{{key: "a", value: "unterminated b", hasValue: true}}},
		{`"quoted bare" x`, []param{{key: "quoted bare"}, {key: "x"}}},
		{`a="" b`, []param{{key: "a", hasValue: true}, {key: "b"}}},
		{"=v =a=b", []param{{key: "=v"}, {key: "=a", value: "b", hasValue: true}}},
		{"-- a=1", nil},
		{"a --x", []param{{key: "a"}, {key: "--x"}}},
	} {
		if got := ParseCmdline(tc.line).params; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseCmdline(%q) = %+v; want %+v", tc.line, got, tc.want)
		}
	}
	var zero Cmdline
	if _, ok := zero.Get("a"); ok {
		t.Error("zero Cmdline has a parameter")
	}
}

func TestCmdlineModuleParams(t *testing.T) {
	c := ParseCmdline(`virtio-pci.force_legacy=1 vz.debug=1 virtio_pci.disable ` +
		`virtio_pci.msg="a b" virtio_pcix.no=1 virtio_pci= virtio_pci.=x ` +
		`virtio_pci force_legacy=0 virtio_blk.queue_depth=64`)
	want := []string{"force_legacy=1", "disable", `msg="a b"`}
	for _, mod := range []string{"virtio_pci", "virtio-pci"} {
		if got := c.ModuleParams(mod); !reflect.DeepEqual(got, want) {
			t.Errorf("ModuleParams(%q) = %q; want %q", mod, got, want)
		}
	}
	if got := c.ModuleParams("virtio_blk"); !reflect.DeepEqual(got, []string{"queue_depth=64"}) {
		t.Errorf("ModuleParams(virtio_blk) = %q", got)
	}
	if got := c.ModuleParams("ext4"); got != nil {
		t.Errorf("ModuleParams(ext4) = %q; want none", got)
	}
	// The parameters must survive the kernel's own parsing of the joined string.
	back := ParseCmdline(`force_legacy=1 disable msg="a b"`)
	if v, _ := back.Get("msg"); v != "a b" {
		t.Errorf("re-parsed msg = %q", v)
	}
}

func TestReadCmdline(t *testing.T) {
	c, err := ReadCmdline()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.params) == 0 {
		t.Error("no parameters read from /proc/cmdline")
	}
}
