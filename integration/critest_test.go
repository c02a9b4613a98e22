package integration

import (
	"archive/tar"
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vz-shim/containerd-shim-vz/internal/testimage"
)

// critestExceptions lists the critest specs that pass with runc and may fail with vz, each with
// its reason.
const critestExceptions = "testdata/critest-vz-exceptions.txt"

// critestTimeout bounds one run of the suite: a hung spec must not eat CI's 90 minutes.
const critestTimeout = 35 * time.Minute

// critestNodes is how many specs run at once (critest -parallel, through the ginkgo CLI): with
// the vz handler a spec mostly waits for its VMs to boot under TCG.
const critestNodes = 2

// TestCritest runs Kubernetes' CRI validation suite (critest of cri-tools v1.37.0) against the
// CRI containerd, first with the runc handler as the baseline, then with vz. Every spec that
// passes with runc must pass with vz unless the exceptions file names it with a reason; an
// exception that no longer applies fails the test too, so the list stays true. The images come
// from a registry on loopback: critest's default image (-test-images-file) and registry.k8s.io's
// web servers (a mirror in the CRI's hosts.toml). The specs that need other upstream images
// (gcr.io's image-service test images, nonewprivs) fail with both handlers and so count against
// neither.
func TestCritest(t *testing.T) {
	var (
		runc, vz       map[string]string
		missing, stale []string
	)
	// Registered first, so it runs last: after the logs that a failure dumps (the registry's,
	// containerd's), the end of the output says why.
	t.Cleanup(func() {
		for _, s := range missing {
			t.Errorf("passes with runc, not with vz (twice), and is not an exception: %s (vz: %s)", s, vz[s])
		}
		for _, s := range stale {
			t.Errorf("exception that no longer holds (remove it from %s): %s (runc: %s, vz: %s)", critestExceptions, s, orNone(runc[s]), orNone(vz[s]))
		}
	})
	reg := startRegistry(t)
	d := startCRI(t, reg)
	critest := filepath.Join(filepath.Dir(filepath.Dir(d.bin.cniDir)), "crictl", "bin", "critest")
	if !isExecutable(critest) {
		t.Fatalf("%s missing: make crictl", critest)
	}
	exceptions, err := readExceptions(critestExceptions)
	if err != nil {
		t.Fatal(err)
	}
	images := pushCritestImages(t, reg, d.bin.busybox, t.TempDir())
	// The privileged specs make a bridge in their container: a Kubernetes node whose pods do
	// that loads the guest's optional bridge module (guest_modules).
	vzOpts, err := os.ReadFile(d.vzConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.vzConfig, append(vzOpts, "guest_modules = [\"bridge\"]\n"...), 0o600); err != nil {
		t.Fatal(err)
	}

	run := func(handler string, specs ...string) map[string]string {
		start := time.Now()
		states := runCritest(t, d, critest, handler, images, specs...)
		t.Logf("critest with %s: %s in %s", handler, tally(states), time.Since(start).Round(time.Second))
		// A spec that fails before it records its pod's id leaves the pod behind (critest's
		// own cleanup): remove what is left, which must then leave nothing (the leak check).
		if left := crictl(t, d, "pods", "-q"); left != "" {
			t.Logf("critest with %s left %d pods; removing them", handler, len(strings.Fields(left)))
			crictl(t, d, "rmp", "-f", "-a")
		}
		return states
	}
	runc = run("runc")
	vz = run("vz")
	missing, stale = critestVerdict(runc, vz, exceptions)
	if len(missing)+len(stale) > 0 {
		// Once more with vz, just those specs: a spec that passes (or fails) only sometimes
		// under TCG on a loaded machine is logged, not failed on; one that does the same twice
		// is a verdict.
		first := maps.Clone(vz)
		specs := append(append([]string{}, missing...), stale...)
		t.Logf("critest with vz: running %d specs again: %s", len(specs), strings.Join(specs, "; "))
		again := run("vz", specs...)
		for _, spec := range specs {
			if st, ok := again[spec]; ok {
				vz[spec] = st
			}
		}
		missing, stale = critestVerdict(runc, vz, exceptions)
		for _, spec := range specs {
			if vz[spec] != first[spec] {
				t.Logf("FLAKY with vz (%s, then %s): %s", first[spec], vz[spec], spec)
			}
		}
	}
	fmt.Printf("critest tallies: runc %s; vz %s; %d exceptions\n", tally(runc), tally(vz), len(exceptions))
}

// critestVerdict returns the specs that pass with runc and not with vz without an exception
// (missing), and the exceptions whose spec passes with vz or no longer with runc (stale), sorted.
func critestVerdict(runc, vz map[string]string, exceptions map[string]string) (missing, stale []string) {
	for spec, state := range runc {
		if state != "passed" || vz[spec] == "passed" {
			continue
		}
		if _, ok := exceptions[spec]; !ok {
			missing = append(missing, spec)
		}
	}
	for spec := range exceptions {
		if runc[spec] != "passed" || vz[spec] == "passed" {
			stale = append(stale, spec)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	return missing, stale
}

func orNone(s string) string {
	if s == "" {
		return "not run"
	}
	return s
}

// readExceptions reads "spec text -- reason" lines; # starts a comment.
func readExceptions(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		spec, reason, ok := strings.Cut(line, " -- ")
		if !ok || strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: want \"spec -- reason\"", path, n)
		}
		out[strings.TrimSpace(spec)] = strings.TrimSpace(reason)
	}
	return out, sc.Err()
}

// pushCritestImages pushes the images critest runs, made of busybox: its default image, the web
// servers of the networking and multi-container specs (port 80) under their registry.k8s.io
// names (the CRI's mirror), and writes the -test-images-file naming the default one.
func pushCritestImages(t *testing.T, reg *registry, busybox, dir string) string {
	t.Helper()
	bb, err := testimage.BusyboxLayer(busybox)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	box, err := testimage.BuildImageWith([]testimage.Layer{bb}, "critest busybox", ocispec.ImageConfig{Env: env, Cmd: []string{"sh"}})
	if err != nil {
		t.Fatal(err)
	}
	page := []byte("<html><body>critest web server</body></html>\n")
	www := testimage.Layer{Entries: []testimage.Entry{
		{Header: tar.Header{Typeflag: tar.TypeDir, Name: "www/", Mode: 0o755}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "www/index.html", Mode: 0o644}, Data: page},
	}}
	// The multi-container spec looks for "httpd" in its server's log.
	for _, name := range []string{"nginx:1.14-2", "httpd:2.4.39-4"} {
		repo, tag, _ := strings.Cut(name, ":")
		web, err := testimage.BuildImageWith([]testimage.Layer{bb, www}, "critest web server", ocispec.ImageConfig{
			Env:          env,
			Cmd:          []string{"sh", "-c", "echo " + repo + ": serving /www on port 80; exec httpd -f -p 80 -h /www"},
			ExposedPorts: map[string]struct{}{"80/tcp": {}},
		})
		if err != nil {
			t.Fatal(err)
		}
		reg.push(t, "e2e-test-images/"+repo, tag, web)
	}
	path := filepath.Join(dir, "critest-images.yaml")
	body := fmt.Sprintf("defaultTestContainerImage: %s\n", reg.push(t, "e2e-test-images/busybox", "1.29-2", box))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCritest runs the suite with one runtime handler and returns each spec's state.
// With specs, it runs just those (their full texts, as the states are keyed).
func runCritest(t *testing.T, d *daemon, critest, handler, images string, specs ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), critestTimeout)
	defer cancel()
	args := []string{
		"-runtime-endpoint", "unix://" + d.address, "-image-endpoint", "unix://" + d.address,
		"-runtime-handler", handler, "-test-images-file", images,
		"-ginkgo.json-report=" + report, "-ginkgo.no-color", "-ginkgo.timeout=" + critestTimeout.String(),
		"-parallel=" + strconv.Itoa(critestNodes),
	}
	if focus := os.Getenv("VZTEST_CRITEST_FOCUS"); focus != "" {
		args = append(args, "-ginkgo.focus="+focus)
	}
	if len(specs) > 0 {
		// ginkgo focuses on the full text (the containers' texts and the It's, spaced), which
		// it matches with more in front: anchored at the end only.
		quoted := make([]string, len(specs))
		for i, s := range specs {
			quoted[i] = regexp.QuoteMeta(s) + "$"
		}
		args = append(args, "-ginkgo.focus="+strings.Join(quoted, "|"))
	}
	cmd := exec.CommandContext(ctx, critest, args...)
	cmd.Dir = dir
	// critest runs ginkgo, which hack/crictl.sh builds next to it.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(critest)+":"+d.bin.path)
	logPath := filepath.Join(dir, "critest.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	runErr := cmd.Run()
	logf.Close()
	states, slowest, err := readGinkgoReport(report)
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("critest with %s: %v (exit: %v)\n%s", handler, err, runErr, tailLines(string(b), maxLogLines))
	}
	t.Logf("critest with %s: slowest specs: %s", handler, strings.Join(slowest, "; "))
	if keep := os.Getenv("VZTEST_CRITEST_LOGS"); keep != "" {
		b, _ := os.ReadFile(logPath)
		_ = os.WriteFile(filepath.Join(keep, "critest-"+handler+".log"), b, 0o644)
	}
	return states
}

// readGinkgoReport reads a ginkgo v2 JSON report into spec text → state ("passed", "failed",
// "skipped", …) for its It nodes, and the three slowest specs with their times.
func readGinkgoReport(path string) (states map[string]string, slowest []string, _ error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var suites []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeType            string
			LeafNodeText            string
			State                   string
			RunTime                 time.Duration // ns in the report
		}
	}
	if err := json.Unmarshal(b, &suites); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	type timed struct {
		text string
		took time.Duration
	}
	var specs []timed
	states = map[string]string{}
	for _, s := range suites {
		for _, r := range s.SpecReports {
			if r.LeafNodeType != "It" {
				continue
			}
			text := strings.Join(append(append([]string{}, r.ContainerHierarchyTexts...), r.LeafNodeText), " ")
			states[text] = r.State
			specs = append(specs, timed{text, r.RunTime})
		}
	}
	if len(states) == 0 {
		return nil, nil, fmt.Errorf("%s: no specs", path)
	}
	slices.SortFunc(specs, func(a, b timed) int { return cmp.Compare(b.took, a.took) })
	for _, s := range specs[:min(3, len(specs))] {
		slowest = append(slowest, fmt.Sprintf("%s (%s)", s.text, s.took.Round(100*time.Millisecond)))
	}
	return states, slowest, nil
}

// tally counts the states of a report: "78 passed, 31 failed, 33 skipped".
func tally(states map[string]string) string {
	n := map[string]int{}
	for _, s := range states {
		n[s]++
	}
	var keys []string
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", n[k], k))
	}
	return strings.Join(parts, ", ")
}
