package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// netnsEnv marks the test process that runs in the network namespace runInNetNS made.
const netnsEnv = "VZTEST_IN_NETNS"

// runInNetNS runs this test binary again, with the same arguments, in a new network namespace
// of its own, and returns its exit code; ok is false when this process is that child already.
//
// Everything the tests start (containerd, the shims, QEMU, CNI's bridge and its private
// addresses, the registry on loopback) then lives in a namespace the test made, as this
// machine's rules want (shared/TESTING.md), and goes away with it. It is a new process rather
// than unshare(2) in this one: a Go process's threads cannot all be moved.
func runInNetNS() (code int, ok bool) {
	if os.Getenv(netnsEnv) != "" {
		return 0, false
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), true
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: running the tests in a network namespace: %v\n", err)
		return 1, true
	}
	return 0, true
}

// loopbackUp brings up lo of the new namespace: the registry and the tests' servers listen there.
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(lo)
}

// Where the shim and CNI keep a task's network on the host (shim/netsetup_linux.go, CNI's
// host-local IPAM of the default network).
const (
	vzNetState   = "/run/containerd-vz/net"
	vzPodShares  = "/run/containerd-vz/pod" // shim/podshare_linux.go
	hostLocalDir = "/var/lib/cni/networks/vz"
	cniNetworks  = "/var/lib/cni/networks"
)

// netFiles lists what the tasks' networks leave on the host while they exist: the shim's network
// state and namespaces, and host-local's IP allocations.
func netFiles() []string {
	var files []string
	for _, dir := range []string{vzNetState, filepath.Join(vzNetState, "ns"), vzPodShares} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !e.IsDir() || dir == vzPodShares {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
	}
	// host-local's allocations of every network (the shim's, nerdctl's).
	nets, _ := os.ReadDir(cniNetworks)
	for _, n := range nets {
		dir := filepath.Join(cniNetworks, n.Name())
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
				files = append(files, filepath.Join(dir, n))
			}
		}
	}
	return files
}

// netLeaks lists what of the tasks' networks outlives them: files (netFiles) not in the
// baseline, veth interfaces in the test's namespace (CNI's host ends), and iptables rules that
// CNI made for one container (they name its id).
func netLeaks(base *baseline) []string {
	var problems []string
	if mounts, err := mountsUnder("/run/containerd-vz"); err == nil {
		for _, m := range mounts {
			if !strings.HasPrefix(m, filepath.Join(vzNetState, "ns")+"/") || base == nil || !base.netFiles[m] {
				problems = append(problems, "mount "+m)
			}
		}
	}
	for _, f := range netFiles() {
		if base == nil || !base.netFiles[f] {
			problems = append(problems, "network file "+f)
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if l.Type() == "veth" || l.Type() == "tuntap" {
				problems = append(problems, fmt.Sprintf("%s interface %s", l.Type(), l.Attrs().Name))
			}
		}
	}
	for _, table := range []string{"nat", "filter"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue // no iptables, no rules
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A ") && strings.Contains(line, ` id: \"`) {
				problems = append(problems, "iptables rule "+line)
			}
		}
	}
	return problems
}
