package guest_test

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vz-shim/containerd-shim-vz/guest/cpio"
)

// TestModulesDepMatchesDepmod checks the modules.dep that vz-guest writes
// into each built initramfs against what kmod's depmod makes of the same
// module files: the same dependencies for every module, listed in an order
// depmod could have written (a module before the modules it needs).
func TestModulesDepMatchesDepmod(t *testing.T) {
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		depmod = "/usr/sbin/depmod"
		if _, err := os.Stat(depmod); err != nil {
			t.Skip("SKIPPING: no depmod (Debian package kmod)")
		}
	}
	for _, img := range guestImages(t) {
		if img.rootDisk {
			// Our kernel, which has no modules (TestBuildKernelImage).
			continue
		}
		t.Run(img.name, func(t *testing.T) {
			root := t.TempDir()
			var ours []byte
			var release string
			walkInitrd(t, filepath.Join(img.dir, "initrd"), func(h *cpio.Header, r io.Reader) {
				rest, ok := strings.CutPrefix(h.Name, "lib/modules/")
				if !ok || h.Type() != cpio.TypeReg {
					return
				}
				release, _, _ = strings.Cut(rest, "/")
				b, err := io.ReadAll(r)
				if err != nil {
					t.Fatal(err)
				}
				if path.Base(h.Name) == "modules.dep" {
					ours = b
					return
				}
				p := filepath.Join(root, h.Name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			})
			if ours == nil {
				t.Fatal("no modules.dep in the initramfs")
			}
			if out, err := exec.Command(depmod, "-b", root, release).CombinedOutput(); err != nil {
				t.Fatalf("depmod: %v: %s", err, out)
			}
			theirs, err := os.ReadFile(filepath.Join(root, "lib/modules", release, "modules.dep"))
			if err != nil {
				t.Fatal(err)
			}
			got, want := parseDep(t, ours), parseDep(t, theirs)
			if len(got) != len(want) {
				t.Errorf("modules.dep has %d modules, depmod %d", len(got), len(want))
			}
			for mod, deps := range want {
				if !sameSet(got[mod], deps) {
					t.Errorf("%s: dependencies %v, depmod says %v", mod, got[mod], deps)
				}
			}
			for mod, deps := range got {
				for i := range deps {
					for _, later := range deps[i+1:] {
						if slices.Contains(want[later], deps[i]) {
							t.Errorf("%s: %s is listed before %s, which needs it", mod, deps[i], later)
						}
					}
				}
			}
		})
	}
}

func parseDep(t *testing.T, b []byte) map[string][]string {
	t.Helper()
	out := make(map[string][]string)
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		mod, deps, ok := strings.Cut(s.Text(), ":")
		if !ok {
			t.Fatalf("malformed modules.dep line %q", s.Text())
		}
		out[mod] = strings.Fields(deps)
	}
	return out
}

func sameSet(a, b []string) bool {
	m := func(s []string) map[string]bool {
		out := make(map[string]bool)
		for _, x := range s {
			out[x] = true
		}
		return out
	}
	return len(a) == len(b) && reflect.DeepEqual(m(a), m(b))
}
