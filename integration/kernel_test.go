package integration

import (
	"slices"
	"strings"
	"testing"
)

// kernelProbe prints what a container sees of the kernel under it, one fact a line: the facts
// our kernel's config must give as Debian's does (guest/kconfig/).
const kernelProbe = `uname -r
echo controllers: $(awk 'NR > 1 && $4 == 1 { print $1 }' /proc/cgroups | sort)
mount -t cgroup2 none /sys/fs/cgroup
echo cgroupfiles: $(ls /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup) | grep -E '^(memory|pids|cpu|io|cpuset|hugetlb)\.' | grep -vE 'stat|events|pressure|numa|peak|reclaim' | sort)
echo namespaces: $(ls /proc/self/ns | sort)
echo seccomp: $(grep -E '^Seccomp:' /proc/self/status | tr -s '\t ' ' ')
echo interfaces: $(ls /sys/class/net | sort)
echo filesystems: $(grep -oE '(ext4|overlay|9p|virtiofs|erofs|xfs|tmpfs|cgroup2)$' /proc/filesystems | sort -u)
echo network: $(ip -o -4 addr show dev eth0 | grep -c inet)`

// TestGuestKernels: a container runs in a VM of our kernel (the default, hack/kernel.sh) and in
// one of Debian's kernel with the modules the initrd carries (the fallback, the `kernel` and
// `initrd` options), and sees the same machine: the same cgroup controllers, namespaces, seccomp,
// interfaces and network, with our kernel every cgroup file and filesystem Debian's has, erofs
// and xfs included. A symbol our config lost shows up here as a difference.
func TestGuestKernels(t *testing.T) {
	rt := runtimeCase{name: "vz", runtime: vzRuntime, vm: true}
	if reason := rt.skipReason(); reason != "" {
		t.Skip(skipPrefix + reason)
	}
	ours, err := kernelRelease(suite.bin.kernel)
	if err != nil {
		t.Fatal(err)
	}
	debian, err := kernelRelease(suite.bin.debianKernel)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(ours, "-vz") || !strings.HasPrefix(ours, "6.12.") {
		t.Errorf("the default kernel is %s, want ours (6.12.*-vz, hack/kernel.sh)", ours)
	}
	seen := map[string]map[string]string{}
	for _, k := range []struct{ name, release string }{{"ours", ours}, {"debian", debian}} {
		t.Run(k.name, func(t *testing.T) {
			h := newHarness(t, rt)
			if k.name == "debian" {
				h.vzConfig = debianRuntimeConfig(t, h.d.bin)
			}
			// Privileged: the probe mounts the cgroup hierarchy to see its own cgroup's files.
			out := h.ctrOK(h.runArgs(h.rmFlags("--privileged"), h.newID("kernel-"+k.name), "sh", "-c", kernelProbe)...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) == 0 || lines[0] != k.release {
				t.Fatalf("uname -r: %q, want %s:\n%s", lines[0], k.release, out)
			}
			facts := map[string]string{}
			for _, l := range lines[1:] {
				if key, v, ok := strings.Cut(l, ": "); ok {
					facts[key] = v
				}
			}
			seen[k.name] = facts
			t.Logf("%s kernel %s:\n%s", k.name, k.release, out)
		})
	}
	o, d := seen["ours"], seen["debian"]
	if o == nil || d == nil {
		t.FailNow()
	}
	for _, key := range []string{"controllers", "namespaces", "seccomp", "interfaces", "network"} {
		if o[key] != d[key] || o[key] == "" {
			t.Errorf("%s: ours %q, Debian's %q", key, o[key], d[key])
		}
	}
	// Every cgroup file runc may write (memory.swap.max needs swap support, hugetlb.* hugetlbfs,
	// io.max and io.weight throttling and iocost): Debian's kernel has them all; ours must too,
	// but for zswap and 1 GiB huge pages, which it leaves out.
	ocg := strings.Fields(o["cgroupfiles"])
	for _, f := range strings.Fields(d["cgroupfiles"]) {
		if !slices.Contains(ocg, f) && !strings.Contains(f, "zswap") && !strings.HasPrefix(f, "hugetlb.1GB.") {
			t.Errorf("cgroup file %s: Debian's kernel has it, ours not (ours: %v)", f, ocg)
		}
	}
	if !slices.Contains(ocg, "memory.swap.max") {
		t.Errorf("no memory.swap.max in our kernel's container cgroup (%v)", ocg)
	}
	ofs, dfs := strings.Fields(o["filesystems"]), strings.Fields(d["filesystems"])
	for _, fs := range append(dfs, "erofs", "xfs", "ext4", "overlay", "9p", "virtiofs") {
		if !slices.Contains(ofs, fs) {
			t.Errorf("filesystem %s: not in our kernel's /proc/filesystems (%v); Debian's has %v", fs, ofs, dfs)
		}
	}
	if o["network"] != "1" {
		t.Errorf("eth0 has %s IPv4 addresses, want 1", o["network"])
	}
}
