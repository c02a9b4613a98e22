package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// hostHooks are the OCI hooks a VM runtime runs on the host: runc runs
// these in the runtime's namespaces too, and the host is where their
// programs are (nerdctl's CNI hook among them). createContainer and
// startContainer run in the container's namespaces: they stay in the guest.
type hostHooks struct {
	prestart      []specs.Hook // deprecated, but still what some clients use
	createRuntime []specs.Hook
	poststart     []specs.Hook
	poststop      []specs.Hook
}

// takeHostHooks moves the host's hooks out of spec.
func takeHostHooks(spec *specs.Spec) hostHooks {
	if spec.Hooks == nil {
		return hostHooks{}
	}
	h := hostHooks{
		createRuntime: spec.Hooks.CreateRuntime,
		poststart:     spec.Hooks.Poststart,
		poststop:      spec.Hooks.Poststop,
	}
	//lint:ignore SA1019 deprecated, but runc still runs them and clients still set them
	h.prestart, spec.Hooks.Prestart = spec.Hooks.Prestart, nil
	spec.Hooks.CreateRuntime = nil
	spec.Hooks.Poststart = nil
	spec.Hooks.Poststop = nil
	return h
}

// setsUpNetwork tells whether hooks run at create, when the network
// namespace is new: such a client (nerdctl) sets up the network itself.
func (h hostHooks) setsUpNetwork() bool {
	return len(h.prestart) > 0 || len(h.createRuntime) > 0
}

// defaultHookTimeout bounds a hook that names no timeout, so that a hung
// hook cannot hang the task forever.
const defaultHookTimeout = 2 * time.Minute

// runHooks runs hooks in order with the container's state on their stdin,
// as runc does; the first that fails stops the rest, and its stderr is in
// the error.
func runHooks(ctx context.Context, kind string, hooks []specs.Hook, state specs.State) error {
	if len(hooks) == 0 {
		return nil
	}
	b, err := json.Marshal(state)
	if err != nil {
		return err
	}
	for i, h := range hooks {
		timeout := defaultHookTimeout
		if h.Timeout != nil && *h.Timeout > 0 {
			timeout = time.Duration(*h.Timeout) * time.Second
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		cmd := exec.CommandContext(hctx, h.Path)
		if len(h.Args) > 0 {
			cmd.Args = h.Args
		}
		cmd.Env = h.Env
		cmd.Stdin = bytes.NewReader(b)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		cancel()
		if err != nil {
			return fmt.Errorf("%s hook #%d (%s): %w: %s", kind, i, h.Path, err, strings.TrimSpace(stderr.String()+" "+stdout.String()))
		}
		log.G(ctx).WithFields(log.Fields{"hook": kind, "path": h.Path, "took": time.Since(start)}).Debug("hook ran")
	}
	return nil
}
