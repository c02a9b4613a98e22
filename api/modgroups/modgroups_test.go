package modgroups

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	in := map[string][]string{"usb": {"xhci_pci", "usb_storage"}, "bridge": {"bridge"}}
	var b bytes.Buffer
	if err := Write(&b, in); err != nil {
		t.Fatal(err)
	}
	if b.String() != "bridge: bridge\nusb: xhci_pci usb_storage\n" {
		t.Errorf("written %q", b.String())
	}
	out, err := Parse(&b)
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Errorf("parsed %v %v", out, err)
	}
	if got := Cmdline([]string{"usb", "bridge"}); got != "vz.modules=usb,bridge" {
		t.Errorf("Cmdline = %q", got)
	}
}

func TestParseRejects(t *testing.T) {
	for _, text := range []string{"usb xhci_pci\n", "usb:\n", ": x\n", "a,b: x\n", "usb: a\nusb: b\n"} {
		if g, err := Parse(strings.NewReader(text)); err == nil {
			t.Errorf("Parse(%q) = %v", text, g)
		}
	}
	if err := Write(&bytes.Buffer{}, map[string][]string{"a,b": {"x"}}); err == nil {
		t.Errorf("Write took a group with a comma")
	}
}
