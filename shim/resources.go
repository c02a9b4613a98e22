package shim

import (
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The pod-level resources CRI puts on a pod's sandbox container
// (containerd's internal/cri/annotations).
const (
	annSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
	annSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
)

// vmOverheadMiB is added to a container's memory limit to size its VM: the
// guest kernel, the agent and runc need it beside the container.
const vmOverheadMiB = 128

// vmSize sizes the VM from the container's limits; without limits the
// runtime options' defaults apply. The container's own cgroup in the guest
// still enforces the limits themselves (runc applies the spec).
//
// A pod's VM is sized from its pod-level resources instead (podSize): the
// sandbox container itself sets no limits, and every container of the pod
// lives in the VM.
func vmSize(spec *specs.Spec, defCPUs, defMemMiB int) (cpus, memMiB int) {
	cpus, memMiB = defCPUs, defMemMiB
	if c, m, ok := podSize(spec.Annotations); ok {
		if c > 0 {
			cpus = c
		}
		if m > 0 {
			memMiB = m
		}
		return cpus, memMiB
	}
	if spec.Linux == nil || spec.Linux.Resources == nil {
		return cpus, memMiB
	}
	r := spec.Linux.Resources
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		memMiB = int((*m.Limit+(1<<20)-1)>>20) + vmOverheadMiB
	}
	if c := r.CPU; c != nil {
		switch {
		case c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0:
			// A fraction of a CPU still needs one vCPU.
			cpus = int((uint64(*c.Quota) + *c.Period - 1) / *c.Period)
		case c.Cpus != "":
			if n := cpusetCount(c.Cpus); n > 0 {
				cpus = n
			}
		}
	}
	return cpus, memMiB
}

// cpusetCount counts the CPUs of a cpuset list such as "0-2,4".
func cpusetCount(s string) int {
	n := 0
	start, cur, inRange, have := 0, 0, false, false
	flush := func() {
		if !have {
			return
		}
		if inRange {
			if cur >= start {
				n += cur - start + 1
			}
		} else {
			n++
		}
	}
	for _, ch := range s + "," {
		switch {
		case ch >= '0' && ch <= '9':
			cur = cur*10 + int(ch-'0')
			have = true
		case ch == '-':
			start, cur, inRange = cur, 0, true
		case ch == ',':
			flush()
			start, cur, inRange, have = 0, 0, false, false
		default:
			return 0
		}
	}
	return n
}

// podSize reads CRI's pod-level resources: the memory limit (bytes) plus
// the VM's overhead, and the CPU quota over its period, rounded up. ok is
// false when the pod sets neither; 0 is "not set".
func podSize(ann map[string]string) (cpus, memMiB int, ok bool) {
	if b, err := strconv.ParseInt(ann[annSandboxMemory], 10, 64); err == nil && b > 0 {
		memMiB = int((b+(1<<20)-1)>>20) + vmOverheadMiB
	}
	q, errq := strconv.ParseInt(ann[annSandboxCPUQuota], 10, 64)
	p, errp := strconv.ParseInt(ann[annSandboxCPUPeriod], 10, 64)
	if errq == nil && errp == nil && q > 0 && p > 0 {
		cpus = int((q + p - 1) / p)
	}
	return cpus, memMiB, cpus > 0 || memMiB > 0
}
