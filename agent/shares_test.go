package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	agentapi "github.com/vz-shim/containerd-shim-vz/api/agent/v1"
)

func TestShareMountFor(t *testing.T) {
	for _, tc := range []struct {
		share *agentapi.Share
		want  shareMount
	}{
		{&agentapi.Share{Tag: "s0", Fstype: "9p"}, shareMount{source: "s0", target: "/shares/s0", fstype: "9p",
			data: "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"}},
		{&agentapi.Share{Tag: "s1", Fstype: "9p", Readonly: true}, shareMount{source: "s1", target: "/shares/s1", fstype: "9p",
			flags: unix.MS_RDONLY, data: "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"}},
		{&agentapi.Share{Tag: "s2", Fstype: "virtiofs", Readonly: true}, shareMount{source: "s2", target: "/shares/s2", fstype: "virtiofs",
			flags: unix.MS_RDONLY}},
	} {
		got, err := shareMountFor("/shares", tc.share)
		if err != nil {
			t.Errorf("%v: %v", tc.share, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%v: %+v, want %+v", tc.share, got, tc.want)
		}
	}
	for _, s := range []*agentapi.Share{
		{Tag: "", Fstype: "9p"},
		{Tag: "..", Fstype: "9p"},
		{Tag: "a/b", Fstype: "9p"},
		{Tag: "a,b", Fstype: "9p"},
		{Tag: "s0", Fstype: "nfs"},
		{Tag: "s0"},
	} {
		if _, err := shareMountFor("/shares", s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want invalid argument", s, err)
		}
	}
}

// TestMountSharesChecksFirst: a bad share anywhere in the request fails it
// before anything is created or mounted.
func TestMountSharesChecksFirst(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shares")
	for _, shares := range [][]*agentapi.Share{
		{{Tag: "s0", Fstype: "9p"}, {Tag: "s1", Fstype: "ext4"}},
		{{Tag: "s0", Fstype: "9p"}, {Tag: "s0", Fstype: "9p"}},
	} {
		if err := mountShares(dir, shares); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v, want invalid argument", shares, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s was created: %v", dir, err)
	}
	if err := mountShares(dir, nil); err != nil {
		t.Errorf("no shares: %v", err)
	}
}
