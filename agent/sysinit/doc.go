// Package sysinit performs the duties of the guest agent when it runs as the
// VM's PID 1: leaving the initramfs for a tmpfs root, mounting the API
// filesystems, loading kernel modules, bringing up loopback, and shutting the
// machine down. It is Linux-only.
//
// Functions that affect the whole machine (Shutdown, Fatal's power-off) refuse
// to act unless the caller is PID 1, so that running the agent or its tests on
// a developer's machine can never power it off.
package sysinit
