#!/usr/bin/env bash
# Installs the Debian packages that the build and the tests need. Idempotent.
#
# As root: installs whatever is missing (runs apt-get update only when something is).
# Not as root: prints what is missing and the command that installs it; exits 1 only then.
# When everything is present it prints nothing and calls no apt tool.
set -euo pipefail

packages=(
	busybox-static    # static /bin/busybox for test images and the guest initramfs
	cpio              # initramfs assembly
	e2fsprogs         # mkfs.ext4 / e2fsck for ext4 layer images
	erofs-utils       # mkfs.erofs: EROFS layers for containerd's erofs snapshotter (integration)
	gcc               # cgo, needed by go test -race
	git
	iptables          # the CNI plugins of the default network (bridge ipMasq, portmap, firewall)
	kmod              # depmod / modinfo for guest kernel modules
	libc6-dev         # cgo headers and crt files (gcc only recommends it)
	libprotobuf-dev   # /usr/include/google/protobuf/*.proto (protobuf-compiler only recommends it)
	make
	protobuf-compiler # protoc, for make proto / proto-check
	runc              # agent tests run real containers on the host
)

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "hack/deps.sh: no dpkg-query: not a Debian system; install by hand: ${packages[*]}" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$p")
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "hack/deps.sh: missing Debian packages: ${missing[*]}" >&2
	echo "install them with:" >&2
	echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "hack/deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null
apt-get install -y -q "${missing[@]}" </dev/null
