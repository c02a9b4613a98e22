package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// The vz snapshotter (cmd/containerd-vz-snapshotter) as containerd sees it: the proxy plugin names
// of config.toml.example.
const (
	vzSnapshotter = "vz"
	vzDiffer      = "vz-diff"
)

// discoverSnapshotter fills the snapshotter test prerequisites of bin and says why those tests
// cannot run ("" when they can).
func discoverSnapshotter(bin *binaries) string {
	root, err := repoRoot()
	if err != nil {
		return err.Error()
	}
	bin.example = filepath.Join(root, "config.toml.example")
	var missing []string
	if p := filepath.Join(root, "_output", "bin", "containerd-vz-snapshotter"); isExecutable(p) {
		bin.vzSnapshotter = p
	} else {
		missing = append(missing, p+" (make build)")
	}
	if p := filepath.Join(root, "_output", "tools", "bin", "registry"); isExecutable(p) {
		bin.registry = p
	} else {
		missing = append(missing, p+" (make tools)")
	}
	for _, t := range []struct {
		name string
		dst  *string
	}{{"e2fsck", &bin.e2fsck}, {"debugfs", &bin.debugfs}} {
		if *t.dst, err = lookPath(t.name, bin.path); err != nil {
			missing = append(missing, t.name+" (apt-get install e2fsprogs)")
		}
	}
	if _, err := os.Stat(bin.example); err != nil {
		missing = append(missing, bin.example)
	}
	if len(missing) > 0 {
		bin.vzSnapshotter = "" // containerd is then configured without it
		return "missing " + strings.Join(missing, ", ")
	}
	return ""
}

// snapDaemon is a running containerd-vz-snapshotter: one per containerd of the tests, its root
// under the containerd's temporary directory.
type snapDaemon struct {
	bin               binaries
	containerdAddress string
	root              string
	address           string
	logPath           string

	cmd    *exec.Cmd
	logf   *os.File
	exited chan struct{}
	// err, once set, is why the snapshotter does not serve: every snapshotter test fails with it.
	err error
}

// startSnapshotter starts the snapshotter daemon; it may only serve once containerd is up (its
// differ reads containerd's content store), so readiness is waitReady's business.
func startSnapshotter(bin binaries, dir, containerdAddress string) (*snapDaemon, error) {
	s := &snapDaemon{
		bin:               bin,
		containerdAddress: containerdAddress,
		root:              filepath.Join(dir, "vz-snapshotter"),
		address:           filepath.Join(dir, "vz-snapshotter.sock"),
		logPath:           filepath.Join(dir, "vz-snapshotter.log"),
	}
	var err error
	if s.logf, err = os.Create(s.logPath); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		s.logf.Close()
		return nil, err
	}
	return s, nil
}

// start runs the daemon with the suite's flags and extra ones.
func (s *snapDaemon) start(extra ...string) error {
	s.exited = make(chan struct{})
	args := append([]string{"--root", s.root, "--address", s.address,
		"--containerd-address", s.containerdAddress, "--log-level", "debug"}, extra...)
	s.cmd = exec.Command(s.bin.vzSnapshotter, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.logf, s.logf
	s.cmd.Env = append(os.Environ(), "PATH="+s.bin.path)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	exited := s.exited
	if err := startHeld(s.cmd, func() { close(exited) }); err != nil {
		return fmt.Errorf("start %s: %w", s.bin.vzSnapshotter, err)
	}
	return nil
}

// restartSnapshotter stops the vz snapshotter and starts it again with extra flags, on the same
// root and socket.
func (d *daemon) restartSnapshotter(extra ...string) error {
	if err := d.snap.signalStop(); err != nil {
		return err
	}
	return d.startSnapshotterAgain(extra...)
}

// startSnapshotterAgain starts the vz snapshotter, stopped or killed, with extra flags and waits
// until containerd reaches it: containerd's proxy redials a snapshotter that went away after a
// backoff, and until then its calls fail with the refused dial (`ctr snapshots ls` answers from
// containerd's own records, so the probe prepares and removes a snapshot). The removal also has
// containerd's next garbage collection walk the snapshotter: one that ran while it was down
// failed and is not retried.
func (d *daemon) startSnapshotterAgain(extra ...string) error {
	if err := d.snap.start(extra...); err != nil {
		return err
	}
	if err := d.snap.waitReady(30 * time.Second); err != nil {
		return err
	}
	key := fmt.Sprintf("reach-%d", time.Now().UnixNano())
	ctr := func(args ...string) (result, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return d.ctr(ctx, nil, append([]string{"snapshots", "--snapshotter", vzSnapshotter}, args...)...)
	}
	before := d.snap.snapshotDirs()
	var r result
	var err error
	if !waitFor(30*time.Second, func() bool {
		r, err = ctr("prepare", key)
		return err == nil && r.code == 0
	}) {
		return fmt.Errorf("containerd does not reach the restarted vz snapshotter after 30s: %v %s", err, r.stderr)
	}
	probe := newPaths(d.snap.snapshotDirs(), before)
	if r, err := ctr("rm", key); err != nil || r.code != 0 {
		return fmt.Errorf("removing the probe snapshot %s: %v %s", key, err, r.stderr)
	}
	// containerd removes it from the snapshotter in its garbage collection, soon after: a test
	// must not find it among the snapshotter's directories.
	for _, dir := range probe {
		if !waitFor(30*time.Second, func() bool {
			_, err := os.Stat(dir)
			return errors.Is(err, os.ErrNotExist)
		}) {
			return fmt.Errorf("the probe snapshot's directory %s is still there 30s after its removal", dir)
		}
	}
	return nil
}

// waitReady waits until the snapshotter accepts connections on its socket.
func (s *snapDaemon) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("containerd-vz-snapshotter exited during start-up: %v", s.cmd.ProcessState)
		default:
		}
		if c, err := net.Dial("unix", s.address); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd-vz-snapshotter not listening on %s after %s", s.address, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// alive is nil while the snapshotter runs and serves.
func (s *snapDaemon) alive() error {
	if s.err != nil {
		return s.err
	}
	select {
	case <-s.exited:
		return fmt.Errorf("containerd-vz-snapshotter exited: %v", s.cmd.ProcessState)
	default:
		return nil
	}
}

func (s *snapDaemon) stop() error {
	defer s.logf.Close()
	return s.signalStop()
}

// signalStop ends the daemon with SIGTERM, as a service manager would.
func (s *snapDaemon) signalStop() error {
	select {
	case <-s.exited:
		if st := s.cmd.ProcessState; st != nil && !st.Success() {
			return fmt.Errorf("containerd-vz-snapshotter had exited: %v", st)
		}
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if st := s.cmd.ProcessState; !st.Success() {
			return fmt.Errorf("containerd-vz-snapshotter exited after SIGTERM: %v", st)
		}
		return nil
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("containerd-vz-snapshotter ignored SIGTERM for 15s")
	}
}

func (s *snapDaemon) logSize() int64 { return fileSize(s.logPath) }

func (s *snapDaemon) logSince(offset int64) string { return fileSince(s.logPath, offset) }

func (s *snapDaemon) dumpLog(w io.Writer, offset int64) {
	dumpLog(w, "containerd-vz-snapshotter", s.logPath, offset)
}

// files lists the files and directories under the snapshotter's root, relative to it, but its
// metadata database and top-level directories.
func (s *snapDaemon) files() []string {
	var files []string
	_ = filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == s.root {
			return nil
		}
		rel, _ := filepath.Rel(s.root, p)
		// Its database, and the directories it makes once (snapshots/, ...): what is in them counts.
		if rel == "metadata.db" || (d.IsDir() && !strings.Contains(rel, "/")) {
			return nil
		}
		files = append(files, rel)
		return nil
	})
	sort.Strings(files)
	return files
}

// snapshotDirs lists <root>/snapshots/*.
func (s *snapDaemon) snapshotDirs() []string {
	ents, _ := os.ReadDir(filepath.Join(s.root, "snapshots"))
	var dirs []string
	for _, e := range ents {
		dirs = append(dirs, filepath.Join(s.root, "snapshots", e.Name()))
	}
	return dirs
}

// withVZSnapshotter returns the containerd configuration base with the vz parts of
// config.toml.example merged in, so that the example is what the tests run: its proxy plugins
// (their address replaced by the test snapshotter's socket), its diff service order, and its
// transfer service unpack entries that name a proxy snapshotter (appended to base's).
func withVZSnapshotter(base string, example []byte, address string) (string, error) {
	var cfg, ex map[string]any
	if err := toml.Unmarshal([]byte(base), &cfg); err != nil {
		return "", fmt.Errorf("test config: %w", err)
	}
	if err := toml.Unmarshal(example, &ex); err != nil {
		return "", fmt.Errorf("config.toml.example: %w", err)
	}
	exProxies, ok := ex["proxy_plugins"].(map[string]any)
	if !ok {
		return "", errors.New("config.toml.example: no [proxy_plugins]")
	}
	proxies := map[string]any{}
	snapshotters := map[string]bool{}
	for name, v := range exProxies {
		p, ok := v.(map[string]any)
		if !ok {
			return "", fmt.Errorf("config.toml.example: proxy_plugins.%s is not a table", name)
		}
		p["address"] = address
		proxies[name] = p
		if p["type"] == "snapshot" {
			snapshotters[name] = true
		}
	}
	if !snapshotters[vzSnapshotter] || proxies[vzDiffer] == nil {
		return "", fmt.Errorf("config.toml.example: want proxy plugins %s and %s", vzSnapshotter, vzDiffer)
	}
	cfg["proxy_plugins"] = proxies

	exPlugins, _ := ex["plugins"].(map[string]any)
	plugins, _ := cfg["plugins"].(map[string]any)
	if exPlugins == nil || plugins == nil {
		return "", errors.New("no [plugins] in the test config or config.toml.example")
	}
	const diffService, transfer = "io.containerd.service.v1.diff-service", "io.containerd.transfer.v1.local"
	ds, ok := exPlugins[diffService]
	if !ok {
		return "", fmt.Errorf("config.toml.example: no [plugins.'%s']", diffService)
	}
	plugins[diffService] = ds

	exTransfer, _ := exPlugins[transfer].(map[string]any)
	tr, _ := plugins[transfer].(map[string]any)
	if exTransfer == nil || tr == nil {
		return "", fmt.Errorf("no [plugins.'%s'] in the test config or config.toml.example", transfer)
	}
	exUnpack, _ := exTransfer["unpack_config"].([]any)
	unpack, _ := tr["unpack_config"].([]any)
	n := len(unpack)
	for _, u := range exUnpack {
		if m, ok := u.(map[string]any); ok && snapshotters[fmt.Sprint(m["snapshotter"])] {
			unpack = append(unpack, m)
		}
	}
	if len(unpack) == n {
		return "", fmt.Errorf("config.toml.example: no unpack_config entry names snapshotter %s", vzSnapshotter)
	}
	tr["unpack_config"] = unpack
	// Parallel unpacks, as the example configures them (vz can rebase).
	if v, ok := exTransfer["max_concurrent_unpacks"]; ok {
		tr["max_concurrent_unpacks"] = v
	}

	out, err := toml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	return string(out), nil
}
