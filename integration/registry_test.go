package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

// registry is a running distribution registry (the real one, `registry serve`) on loopback,
// storing on the filesystem under dir; no auth, plain HTTP.
type registry struct {
	host    string // 127.0.0.1:PORT
	dir     string
	storage string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startRegistry starts a registry for tb and stops it (and removes its storage) when tb ends.
// On failure its log is shown.
func startRegistry(tb testing.TB) *registry {
	tb.Helper()
	dir, err := os.MkdirTemp(tempBase(), "vzreg-")
	if err != nil {
		tb.Fatal(err)
	}
	// A free port: the registry cannot be told to pick one and report it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	r := &registry{host: host, dir: dir, storage: filepath.Join(dir, "storage"),
		logPath: filepath.Join(dir, "registry.log"), exited: make(chan struct{})}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, r.storage, host)
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(r.logPath)
	if err != nil {
		tb.Fatal(err)
	}
	r.cmd = exec.Command(suite.bin.registry, "serve", configPath)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	// No tracing: it would try to export to localhost:4318.
	r.cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true")
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startHeld(r.cmd, func() {
		logf.Close()
		close(r.exited)
	}); err != nil {
		logf.Close()
		tb.Fatalf("start registry: %v", err)
	}
	tb.Cleanup(func() { r.stop(tb) })
	if err := r.waitReady(30 * time.Second); err != nil {
		tb.Fatalf("%v\n%s", err, r.log())
	}
	return r
}

func (r *registry) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("registry exited during start-up: %v", r.cmd.ProcessState)
		default:
		}
		resp, err := http.Get("http://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("registry on %s not ready after %s: %v", r.host, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *registry) stop(tb testing.TB) {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	if tb.Failed() || *flagKeep {
		tb.Logf("registry %s: kept %s\n%s", r.host, r.dir, r.log())
		return
	}
	_ = os.RemoveAll(r.dir)
}

func (r *registry) log() string {
	b, _ := os.ReadFile(r.logPath)
	return fmt.Sprintf("---- registry log (%s) ----\n%s---- end of registry log ----", r.logPath, tailLines(string(b), maxLogLines))
}

// ref is the reference of repo:tag on this registry.
func (r *registry) ref(repo, tag string) string { return r.host + "/" + repo + ":" + tag }

// push uploads img as repo:tag (blobs, then the manifest) with the registry HTTP API.
func (r *registry) push(tb testing.TB, repo, tag string, img *testimage.Image) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, l := range img.Layers {
		if err := r.pushBlob(ctx, repo, l.Digest, l.Data); err != nil {
			tb.Fatalf("push layer %s of %s:%s: %v\n%s", l.Digest, repo, tag, err, r.log())
		}
	}
	if err := r.pushBlob(ctx, repo, img.ConfigDigest, img.Config); err != nil {
		tb.Fatalf("push config of %s:%s: %v\n%s", repo, tag, err, r.log())
	}
	u := fmt.Sprintf("http://%s/v2/%s/manifests/%s", r.host, repo, tag)
	if _, err := r.do(ctx, http.MethodPut, u, ocispec.MediaTypeImageManifest, img.Manifest, http.StatusCreated); err != nil {
		tb.Fatalf("push manifest of %s:%s: %v\n%s", repo, tag, err, r.log())
	}
	return r.ref(repo, tag)
}

func (r *registry) pushBlob(ctx context.Context, repo string, dgst digest.Digest, data []byte) error {
	resp, err := r.do(ctx, http.MethodPost, fmt.Sprintf("http://%s/v2/%s/blobs/uploads/", r.host, repo), "", nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("upload location: %w", err)
	}
	base, _ := url.Parse("http://" + r.host + "/")
	loc = base.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", dgst.String())
	loc.RawQuery = q.Encode()
	_, err = r.do(ctx, http.MethodPut, loc.String(), "application/octet-stream", data, http.StatusCreated)
	return err
}

func (r *registry) do(ctx context.Context, method, u, contentType string, body []byte, want int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.ContentLength = int64(len(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// blobPath is where the registry's filesystem storage keeps a blob's bytes.
func (r *registry) blobPath(dgst digest.Digest) string {
	enc := dgst.Encoded()
	return filepath.Join(r.storage, "docker", "registry", "v2", "blobs", dgst.Algorithm().String(), enc[:2], enc, "data")
}

// corruptBlob flips bytes of a stored blob in place: the registry serves it with its old digest.
func (r *registry) corruptBlob(tb testing.TB, dgst digest.Digest) {
	tb.Helper()
	p := r.blobPath(dgst)
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatalf("corrupt blob: %v", err)
	}
	if len(b) < 64 {
		tb.Fatalf("corrupt blob: %s is only %d bytes", p, len(b))
	}
	for i := len(b) / 2; i < len(b)/2+16; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.Fatalf("corrupt blob: %v", err)
	}
	if digest.FromBytes(b) == dgst {
		tb.Fatal(errors.New("corrupt blob: digest unchanged"))
	}
}
