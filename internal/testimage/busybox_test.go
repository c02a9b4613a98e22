package testimage

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// hostBusybox is the static busybox that hack/deps.sh installs (busybox-static).
const hostBusybox = "/bin/busybox"

// TestAppletTable: the applet names read from the binary, as done for a busybox of another
// architecture, are those the binary itself lists.
func TestAppletTable(t *testing.T) {
	out, err := exec.Command(hostBusybox, "--list").Output()
	if err != nil {
		t.Skipf("SKIPPING: no runnable %s (apt-get install busybox-static): %v", hostBusybox, err)
	}
	want := map[string]bool{}
	for _, name := range strings.Fields(string(out)) {
		if name != "busybox" {
			want["bin/"+name] = true
		}
	}
	got, err := appletTable(hostBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d applets from the table, %d from --list", len(got), len(want))
	}
	for l := range want {
		if !got[l] {
			t.Errorf("table lacks %s", l)
		}
	}
	for l := range got {
		if !want[l] {
			t.Errorf("table has %s, --list does not", l)
		}
	}
}

// TestWrongArch: an image for one architecture refuses a busybox of another.
func TestWrongArch(t *testing.T) {
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if other == "" {
		t.Skipf("SKIPPING: no image architecture other than %s to try", runtime.GOARCH)
	}
	err := WriteBusyboxArch(filepath.Join(t.TempDir(), "img.tar"), hostBusybox, "x/y:z", other)
	if err == nil || !strings.Contains(err.Error(), "want") {
		t.Fatalf("busybox of %s written as a %s image: err = %v", runtime.GOARCH, other, err)
	}
}
