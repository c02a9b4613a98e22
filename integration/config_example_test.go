package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/vz-shim/containerd-shim-vz/shim"
)

// exampleConfig is the part of config.toml.example this test reads, in containerd 2.4's field
// names (cmd/containerd/server/config, plugins/transfer, plugins/services/diff, internal/cri/config).
type exampleConfig struct {
	Version      int `toml:"version"`
	ProxyPlugins map[string]struct {
		Type    string `toml:"type"`
		Address string `toml:"address"`
	} `toml:"proxy_plugins"`
	Plugins struct {
		DiffService struct {
			Default []string `toml:"default"`
		} `toml:"io.containerd.service.v1.diff-service"`
		Transfer struct {
			UnpackConfig []struct {
				Platform    string `toml:"platform"`
				Snapshotter string `toml:"snapshotter"`
				Differ      string `toml:"differ"`
				Optional    bool   `toml:"optional"`
			} `toml:"unpack_config"`
		} `toml:"io.containerd.transfer.v1.local"`
		CRIImages struct {
			RuntimePlatforms map[string]struct {
				Snapshotter string `toml:"snapshotter"`
			} `toml:"runtime_platforms"`
		} `toml:"io.containerd.cri.v1.images"`
		CRIRuntime struct {
			Containerd struct {
				Runtimes map[string]struct {
					RuntimeType string         `toml:"runtime_type"`
					Snapshotter string         `toml:"snapshotter"`
					Options     map[string]any `toml:"options"`
				} `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"io.containerd.cri.v1.runtime"`
	} `toml:"plugins"`
}

// TestConfigExample: config.toml.example is a containerd 2.4 configuration (version 3) with the
// vz runtime, the vz proxy snapshotter and differ on one socket, the diff service trying vz-diff
// first, unpacking into vz for linux/amd64 and linux/arm64, and a CRI runtime whose options the
// shim accepts. (The integration containerd runs with its proxy plugin, diff service and unpack
// parts: withVZSnapshotter.)
func TestConfigExample(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "config.toml.example"))
	if err != nil {
		t.Fatal(err)
	}
	var c exampleConfig
	if err := toml.Unmarshal(b, &c); err != nil {
		t.Fatalf("config.toml.example: %v", err)
	}
	if c.Version != 3 {
		t.Errorf("version = %d, want 3 (containerd 2.x)", c.Version)
	}

	sn, diff := c.ProxyPlugins[vzSnapshotter], c.ProxyPlugins[vzDiffer]
	if sn.Type != "snapshot" || diff.Type != "diff" {
		t.Errorf("proxy_plugins: %s type %q, %s type %q; want snapshot and diff", vzSnapshotter, sn.Type, vzDiffer, diff.Type)
	}
	if sn.Address == "" || sn.Address != diff.Address {
		t.Errorf("proxy_plugins: addresses %q and %q, want one socket for both", sn.Address, diff.Address)
	}

	order := c.Plugins.DiffService.Default
	if len(order) == 0 || order[0] != vzDiffer || !slices.Contains(order, "walking") {
		t.Errorf("diff service default = %q, want %s first, then walking", order, vzDiffer)
	}

	for _, platform := range []string{"linux/amd64", "linux/arm64"} {
		found := false
		for _, u := range c.Plugins.Transfer.UnpackConfig {
			if u.Platform == platform && u.Snapshotter == vzSnapshotter && u.Differ == vzDiffer && !u.Optional {
				found = true
			}
		}
		if !found {
			t.Errorf("transfer unpack_config: no entry for %s with snapshotter %s and differ %s", platform, vzSnapshotter, vzDiffer)
		}
	}

	if got := c.Plugins.CRIImages.RuntimePlatforms["vz"].Snapshotter; got != vzSnapshotter {
		t.Errorf("cri images runtime_platforms.vz.snapshotter = %q, want %s", got, vzSnapshotter)
	}
	rt, ok := c.Plugins.CRIRuntime.Containerd.Runtimes["vz"]
	if !ok {
		t.Fatal("no [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vz]")
	}
	if rt.RuntimeType != vzRuntime || rt.Snapshotter != vzSnapshotter {
		t.Errorf("cri runtime vz: runtime_type %q snapshotter %q, want %s and %s", rt.RuntimeType, rt.Snapshotter, vzRuntime, vzSnapshotter)
	}
	// containerd marshals the options table to TOML and sends it as ConfigBody; the shim decodes
	// it strictly.
	body, err := toml.Marshal(rt.Options)
	if err != nil {
		t.Fatal(err)
	}
	dec := toml.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var opts shim.Options
	if err := dec.Decode(&opts); err != nil {
		t.Errorf("cri runtime vz options are not the shim's: %v\n%s", err, body)
	}
}

// TestConfigExampleMerge: the test containerd's configuration gets the example's vz parts with
// the test socket, and keeps its own unpack entries.
func TestConfigExampleMerge(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "config.toml.example"))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{root: "/r", state: "/s", address: "/a.sock", ttrpc: "/a.sock.ttrpc", dir: "/d", socketDir: "/d/s"}
	merged, err := withVZSnapshotter(d.configTOML("/scratch.ext4"), example, "/test/vz.sock")
	if err != nil {
		t.Fatal(err)
	}
	var c exampleConfig
	if err := toml.Unmarshal([]byte(merged), &c); err != nil {
		t.Fatalf("merged config: %v\n%s", err, merged)
	}
	if a := c.ProxyPlugins[vzSnapshotter].Address; a != "/test/vz.sock" {
		t.Errorf("proxy address %q, want the test socket", a)
	}
	var snapshotters []string
	for _, u := range c.Plugins.Transfer.UnpackConfig {
		snapshotters = append(snapshotters, u.Snapshotter)
	}
	for _, want := range []string{snapshotter, "overlayfs", vzSnapshotter} {
		if !slices.Contains(snapshotters, want) {
			t.Errorf("merged unpack_config snapshotters %q lack %s", snapshotters, want)
		}
	}
	if !strings.Contains(merged, `root = '/r'`) && !strings.Contains(merged, `root = "/r"`) {
		t.Errorf("merged config lost the test root:\n%s", merged)
	}
}
