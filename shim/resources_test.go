package shim

import (
	"strconv"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestVMSize(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	for _, tc := range []struct {
		name      string
		res       *specs.LinuxResources
		cpus, mem int
	}{
		{"no limits", nil, 2, 512},
		{"256 MiB", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 << 20)}}, 2, 256 + vmOverheadMiB},
		{"odd bytes round up", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(100<<20 + 1)}}, 2, 101 + vmOverheadMiB},
		{"1.5 cpus", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)}}, 2, 512},
		{"0.2 cpus", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(20000), Period: u64(100000)}}, 1, 512},
		{"4 cpus", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(400000), Period: u64(100000)}}, 4, 512},
		{"cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-2,5"}}, 4, 512},
		{"unlimited quota", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}}, 2, 512},
	} {
		spec := &specs.Spec{Linux: &specs.Linux{Resources: tc.res}}
		if cpus, mem := vmSize(spec, 2, 512); cpus != tc.cpus || mem != tc.mem {
			t.Errorf("%s: %d cpus, %d MiB; want %d, %d", tc.name, cpus, mem, tc.cpus, tc.mem)
		}
	}
	for s, want := range map[string]int{"0": 1, "0-3": 4, "1,3,5": 3, "0-1,4-5": 4, "": 0, "x": 0} {
		if got := cpusetCount(s); got != want {
			t.Errorf("cpusetCount(%q) = %d, want %d", s, got, want)
		}
	}
}

func TestPodSize(t *testing.T) {
	limit := int64(1 << 30)
	spec := &specs.Spec{
		Annotations: map[string]string{
			annSandboxMemory:    strconv.Itoa(256 << 20),
			annSandboxCPUQuota:  "150000",
			annSandboxCPUPeriod: "100000",
		},
		// The pod's resources win over a container's own.
		Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}},
	}
	if cpus, mem := vmSize(spec, 2, 512); cpus != 2 || mem != 256+vmOverheadMiB {
		t.Errorf("pod of 1.5 CPUs and 256 MiB: %d CPUs, %d MiB; want 2 and %d", cpus, mem, 256+vmOverheadMiB)
	}
	spec.Annotations = map[string]string{annSandboxMemory: strconv.Itoa(100<<20 + 1)}
	if cpus, mem := vmSize(spec, 3, 512); cpus != 3 || mem != 101+vmOverheadMiB {
		t.Errorf("memory only: %d CPUs, %d MiB", cpus, mem)
	}
	spec.Annotations = map[string]string{annSandboxMemory: "0", annSandboxCPUQuota: "-1", annSandboxCPUPeriod: "100000"}
	if cpus, mem := vmSize(spec, 3, 512); cpus != 3 || mem != 1024+vmOverheadMiB {
		t.Errorf("no pod limits: %d CPUs, %d MiB; want the container's", cpus, mem)
	}
}
