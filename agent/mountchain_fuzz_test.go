package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

// FuzzTransformMount: whatever mount a snapshotter hands the agent, its
// templates and directives resolve or fail, within bounds, and a mkdir
// directive creates nothing outside the chain's earlier mounts.
func FuzzTransformMount(f *testing.F) {
	f.Add("format/overlay", "{{ source 1 }}", "lowerdir={{ overlay 1 0 }}", "upperdir={{ mount 0 }}/upper")
	f.Add("format/mkdir/overlay", "overlay", "X-containerd.mkdir.path={{ mount 0 }}/upper:0755", "workdir={{ mount 0 }}/work")
	f.Add("mkdir/ext4", "/dev/vdb", "X-containerd.mkdir.path=/etc/x", "ro")
	f.Add("format/ext4", "{{ range 100000000 }}x{{ end }}", "{{ overlay 0 2000000000 }}", "{{ mount -1 }}")
	f.Add("format/format/bind", "{{ mount 1 }}/../../etc", "X-containerd.mkdir.path={{ mount 1 }}/../escape", "rbind")
	f.Fuzz(func(t *testing.T, typ, source, opt1, opt2 string) {
		root := t.TempDir()
		outside := filepath.Join(root, "outside")
		active := []activeMount{
			{Mount: mount.Mount{Type: "ext4", Source: "/dev/vda"}, mountPoint: filepath.Join(root, "0")},
			{Mount: mount.Mount{Type: "ext4", Source: "/dev/vdb"}, mountPoint: filepath.Join(root, "1")},
		}
		for _, a := range active {
			if err := os.Mkdir(a.mountPoint, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Mkdir(outside, 0o700); err != nil {
			t.Fatal(err)
		}
		m, err := transformMount(mount.Mount{Type: typ, Source: source, Options: []string{opt1, opt2}}, active)
		if err == nil {
			for _, s := range append([]string{m.Source, m.Target}, m.Options...) {
				if len(s) > maxExpanded+len(typ)+len(source)+len(opt1)+len(opt2) {
					t.Fatalf("expanded to %d bytes", len(s))
				}
			}
		}
		// Nothing created but under the mounts' directories.
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || p == root {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			top := strings.Split(rel, string(filepath.Separator))[0]
			if top != "0" && top != "1" && top != "outside" {
				t.Errorf("created %s outside the chain's mounts", p)
			}
			if top == "outside" && p != outside {
				t.Errorf("created %s outside the chain's mounts", p)
			}
			return nil
		})
	})
}
