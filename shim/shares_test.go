package shim

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vz-shim/containerd-shim-vz/vm"
)

func TestGuestShares(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	file := filepath.Join(b, "conf")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(a, link); err != nil {
		t.Fatal(err)
	}
	untouched := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"ro"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue"},
	}
	spec := &specs.Spec{Mounts: append(append([]specs.Mount{}, untouched...),
		specs.Mount{Destination: "/data", Type: "bind", Source: a, Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/etc/conf", Type: "bind", Source: file, Options: []string{"rbind", "ro"}},
		// The same directory through a symlink and rw: one share, made rw.
		specs.Mount{Destination: "/again", Type: "none", Source: link, Options: []string{"bind", "rw"}},
	)}
	shares, agentShares, err := guestShares(spec, "9p")
	if err != nil {
		t.Fatal(err)
	}
	wantShares := []vm.Share{{Tag: "s0", Path: a, ReadOnly: false}, {Tag: "s1", Path: b, ReadOnly: true}}
	if !reflect.DeepEqual(shares, wantShares) {
		t.Errorf("shares %+v, want %+v", shares, wantShares)
	}
	if len(agentShares) != 2 {
		t.Fatalf("agent shares %v", agentShares)
	}
	for i, s := range agentShares {
		if s.Tag != wantShares[i].Tag || s.Fstype != "9p" || s.Readonly != wantShares[i].ReadOnly {
			t.Errorf("agent share %d: %v, want %+v with fstype 9p", i, s, wantShares[i])
		}
	}
	if !reflect.DeepEqual(spec.Mounts[:len(untouched)], untouched) {
		t.Errorf("non-bind mounts changed: %+v", spec.Mounts[:len(untouched)])
	}
	binds := spec.Mounts[len(untouched):]
	for i, want := range []struct {
		source  string
		options []string
	}{
		{"/run/vz-agent/shares/s0", []string{"rbind", "ro"}},
		{"/run/vz-agent/shares/s1/conf", []string{"rbind", "ro"}},
		{"/run/vz-agent/shares/s0", []string{"bind", "rw"}},
	} {
		if binds[i].Source != want.source || !reflect.DeepEqual(binds[i].Options, want.options) {
			t.Errorf("bind %d: source %q options %v, want %q %v", i, binds[i].Source, binds[i].Options, want.source, want.options)
		}
	}

	// A spec without binds shares nothing.
	shares, agentShares, err = guestShares(&specs.Spec{Mounts: untouched}, "virtiofs")
	if err != nil || len(shares) != 0 || len(agentShares) != 0 {
		t.Errorf("no binds: %v %v %v", shares, agentShares, err)
	}
	// virtio-fs is passed through for the VZ backend.
	_, agentShares, err = guestShares(&specs.Spec{Mounts: []specs.Mount{{Destination: "/d", Type: "bind", Source: a}}}, "virtiofs")
	if err != nil || len(agentShares) != 1 || agentShares[0].Fstype != "virtiofs" || agentShares[0].Readonly {
		t.Errorf("virtiofs: %v %v", agentShares, err)
	}
}

func TestGuestSharesErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mount specs.Mount
		is    func(error) bool
	}{
		{"missing", specs.Mount{Destination: "/d", Type: "bind", Source: filepath.Join(t.TempDir(), "missing"), Options: []string{"rbind"}}, errdefs.IsNotFound},
		{"relative", specs.Mount{Destination: "/d", Type: "bind", Source: "data"}, errdefs.IsInvalidArgument},
		{"device", specs.Mount{Destination: "/d", Type: "bind", Source: "/dev/null"}, errdefs.IsNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Mounts: []specs.Mount{tc.mount}}
			if _, _, err := guestShares(spec, "9p"); !tc.is(err) {
				t.Errorf("guestShares: %v", err)
			}
		})
	}
}

func TestShareFSType(t *testing.T) {
	if got := shareFSType("qemu"); got != "9p" {
		t.Errorf("qemu: %q", got)
	}
	if got := shareDevice("qemu"); got != "" {
		t.Errorf("qemu: share device %q, want none (one 9p device per share)", got)
	}
	if got := shareDevice("vz"); got != "vz-shares" {
		t.Errorf("vz: share device %q, want vz-shares", got)
	}
	if got := shareFSType("vz"); got != "virtiofs" {
		t.Errorf("vz: %q", got)
	}
}
