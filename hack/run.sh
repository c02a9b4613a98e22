#!/usr/bin/env bash
# make run: a container in a micro-VM, from nothing. It builds what is missing (the shim, the guest,
# containerd 2.4.2, the CNI plugins), starts a private containerd in a temporary directory with the
# blockfile snapshotter, imports a small busybox image made here, runs one container with the vz
# runtime that greets you with the guest's kernel and its own IP on the default CNI network, fetches
# the container's web page from the host at that address, and tears everything down. Needs root.
#
# It all runs in a network namespace of its own (unshare --net): the CNI bridge and its private
# addresses never touch the host's network, and go away with the namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /usr/local/go/bin ] && export PATH="/usr/local/go/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
  echo "make run needs root: it starts containerd, which mounts and runs shims." >&2
  exit 1
fi
arch=$(go env GOARCH)
if [ -z "${VZRUN_NETNS:-}" ]; then
  # Everything that downloads (apt, the Go module proxy) before the namespace, which has no way out.
  make --no-print-directory deps >/dev/null
  make --no-print-directory build containerd cni
  make --no-print-directory guest ARCH="$arch" >/dev/null
  go build -o _output/tools/bin/mkimage ./hack/mkimage
  VZRUN_NETNS=1 exec unshare --net -- "$0" "$@"
fi
ip link set lo up

top=$PWD
tmp=$(mktemp -d /tmp/vzrun-XXXXXX)
# ctr warns about cgroup v1 hosts on every call: not news for a demo.
ctr() { "$top/_output/containerd/bin/ctr" -a "$tmp/c.sock" -n vzrun "$@" 2> >(grep -v DEPRECATION >&2); }
containerd_pid=
cleanup() {
  set +e
  ctr tasks delete --force hello >/dev/null 2>&1
  ctr containers delete hello >/dev/null 2>&1
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
  fi
  # Never remove across a mount point.
  if ! grep -q " $tmp" /proc/self/mountinfo; then
    rm -rf "$tmp"
  else
    echo "make run: $tmp is still mounted, left in place" >&2
  fi
}
trap cleanup EXIT

mkfs.ext4 -q -F "$tmp/scratch.ext4" 256M >/dev/null 2>&1
# The accelerator: kvm where it can run the guest, else tcg. These machines have a /dev/kvm that
# hangs guest kernels, so tcg unless VZ_ACCEL says otherwise.
cat > "$tmp/vz.toml" <<EOT
accel = "${VZ_ACCEL:-tcg}"
EOT
cat > "$tmp/config.toml" <<EOT
version = 3
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$tmp/c.sock"
[ttrpc]
  address = "$tmp/c.sock.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "$tmp/opt"
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "$tmp/s"
[plugins.'io.containerd.snapshotter.v1.blockfile']
  scratch_file = "$tmp/scratch.ext4"
  fs_type = "ext4"
[plugins.'io.containerd.transfer.v1.local']
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = "linux/$arch"
    snapshotter = "blockfile"
EOT

PATH="$top/_output/bin:$top/_output/containerd/bin:$PATH" \
  "$top/_output/containerd/bin/containerd" --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do
  ctr version >/dev/null 2>&1 && break
  sleep 0.1
done

_output/tools/bin/mkimage "$tmp/busybox.tar" localhost/vzrun/busybox:latest
ctr images import --snapshotter blockfile --platform "linux/$arch" "$tmp/busybox.tar" >/dev/null

echo "make run: starting a container in its own micro-VM (QEMU, accel=${VZ_ACCEL:-tcg}, network=cni)..."
start=$(date +%s%N)
ctr run -d --null-io --runtime io.containerd.vz.v1 --runtime-config-path "$tmp/vz.toml" \
  --snapshotter blockfile localhost/vzrun/busybox:latest hello \
  sh -c 'mkdir -p /www && echo "Hello from a container in its own micro-VM!" > /www/index.html &&
         exec httpd -f -p 80 -h /www'
ms=$(( ($(date +%s%N) - start) / 1000000 ))
ctr tasks exec --exec-id greet hello sh -c '
  cat /www/index.html
  echo "guest kernel: $(uname -r) (host: '"$(uname -r)"')"
  echo "guest IP: $(ip -4 -o addr show eth0 | awk "{print \$4}") (its own, on the CNI network vz)"'
ip=$(ctr tasks exec --exec-id ip hello ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
page=
for _ in $(seq 20); do
  page=$(busybox wget -q -O - "http://$ip/" 2>/dev/null) && break
  sleep 0.25
done
echo "make run: the host fetched http://$ip/ from the container: ${page:-NOTHING}"
ctr tasks kill -s KILL hello >/dev/null
echo "make run: the container was up in $((ms / 1000)).$((ms % 1000 / 100)) s; now removing containerd, the VM and $tmp."
[ -n "$page" ]
