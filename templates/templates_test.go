package templates

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// TestGetOnce: ten takers of one missing template at once make it once,
// and all get it.
func TestGetOnce(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "templates")}
	var saves atomic.Int32
	save := func(ctx context.Context, state, work string) error {
		saves.Add(1)
		if fi, err := os.Stat(work); err != nil || !fi.IsDir() {
			t.Errorf("work dir %s: %v", work, err)
		}
		time.Sleep(200 * time.Millisecond) // others arrive meanwhile
		return os.WriteFile(state, []byte("saved"), 0o600)
	}
	var wg sync.WaitGroup
	paths := make([]string, 10)
	madeN := atomic.Int32{}
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, made, err := c.Get(context.Background(), "k1", save)
			if err != nil {
				t.Error(err)
			}
			if made {
				madeN.Add(1)
			}
			paths[i] = p
		}()
	}
	wg.Wait()
	if n := saves.Load(); n != 1 {
		t.Errorf("%d saves, want 1", n)
	}
	if n := madeN.Load(); n != 1 {
		t.Errorf("%d takers made it, want 1", n)
	}
	for _, p := range paths {
		if p != c.Path("k1") {
			t.Errorf("path %q, want %q", p, c.Path("k1"))
		}
	}
	if b, err := os.ReadFile(c.Path("k1")); err != nil || string(b) != "saved" {
		t.Errorf("template: %q, %v", b, err)
	}
	n, bytes, err := c.Usage()
	if err != nil || n != 1 || bytes <= 0 {
		t.Errorf("Usage: %d templates, %d bytes, %v", n, bytes, err)
	}
	assertNoScratch(t, c.Dir)
}

// TestGetFailedSave: a save that fails leaves no template, no half file
// and no scratch directory; the next taker makes it.
func TestGetFailedSave(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	boom := errors.New("boom")
	_, _, err := c.Get(context.Background(), "k", func(ctx context.Context, state, work string) error {
		os.WriteFile(state, []byte("half"), 0o600)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Get: %v, want boom", err)
	}
	if _, err := os.Stat(c.Path("k")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("template after a failed save: %v", err)
	}
	assertNoScratch(t, c.Dir)
	// A dead maker's scratch directory goes when the next maker runs.
	stale := filepath.Join(c.Dir, "k"+tmpInfix+"dead")
	os.MkdirAll(stale, 0o700)
	_, made, err := c.Get(context.Background(), "k", func(ctx context.Context, state, work string) error {
		return os.WriteFile(state, []byte("ok"), 0o600)
	})
	if err != nil || !made {
		t.Fatalf("Get: made %v, %v", made, err)
	}
	assertNoScratch(t, c.Dir)
	if err := c.Remove(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Path("k")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("template after Remove: %v", err)
	}
}

// TestGetWaitsWithContext: a taker waiting for another's template gives up
// when its ctx ends.
func TestGetWaitsWithContext(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	started := make(chan struct{})
	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Get(context.Background(), "k", func(ctx context.Context, state, work string) error {
			close(started)
			<-release
			return os.WriteFile(state, []byte("x"), 0o600)
		})
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _, err := c.Get(ctx, "k", func(ctx context.Context, state, work string) error {
		t.Error("a second save while the first runs")
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get: %v, want the deadline", err)
	}
	close(release)
	<-done
}

func TestKeys(t *testing.T) {
	if Key("a", "bc") == Key("ab", "c") {
		t.Error("Key: parts run together")
	}
	if a, b := Key("a", "b"), Key("a", "b"); a != b {
		t.Errorf("Key: not stable: %s, %s", a, b)
	}
	for _, bad := range []string{"", "../x", "a/b", "a.state"} {
		if _, _, err := (Cache{Dir: t.TempDir()}).Get(context.Background(), bad, nil); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Get(%q): %v", bad, err)
		}
	}
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, []byte("1"), 0o600)
	a, err := FileID(f)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f, []byte("22"), 0o600)
	if b, _ := FileID(f); a == b {
		t.Errorf("FileID unchanged after a rewrite: %s", a)
	}
}

func assertNoScratch(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+tmpInfix+"*"))
	if len(m) > 0 {
		t.Errorf("scratch left: %v", m)
	}
}

// TestPrune keeps the most recently used templates.
func TestPrune(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	base := time.Now().Add(-time.Hour)
	for i, k := range []string{"a", "b", "c", "d"} {
		os.WriteFile(c.Path(k), []byte(k), 0o600)
		os.WriteFile(filepath.Join(c.Dir, k+lockSuffix), nil, 0o600)
		used := base.Add(time.Duration(i) * time.Minute) // d used last
		os.Chtimes(c.Path(k), used, used)
	}
	if err := c.Prune(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]bool{"a": false, "b": false, "c": true, "d": true} {
		_, err := os.Stat(c.Path(k))
		if (err == nil) != want {
			t.Errorf("template %s kept %v, want %v", k, err == nil, want)
		}
		_, err = os.Stat(filepath.Join(c.Dir, k+lockSuffix))
		if (err == nil) != want {
			t.Errorf("lock %s kept %v, want %v", k, err == nil, want)
		}
	}
}
