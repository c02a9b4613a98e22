#!/usr/bin/env bash
# Builds the guest kernel and initramfs for one architecture into _output/guest/<arch>/.
#
#   hack/guest.sh STEP ARCH      ARCH is amd64 or arm64
#
# Steps (each idempotent; `all` runs deps, kernel, deb, busybox, runc, agent, image in order):
#   deps    Debian packages the other steps need (cross compiler, libseccomp, QEMU); runs apt
#           only when something is missing, and adds the foreign dpkg architecture only then.
#   kernel  the guest kernel built from Debian's linux-source-6.12 with guest/kconfig/
#           (hack/kernel.sh; cached outside the checkout) into _output/kernel/<arch>/.
#   deb     the Debian kernel package that linux-image-<arch> depends on, into
#           _output/debs/<arch>/ (kept: skipped when a kernel .deb is already there).
#   busybox busybox-static:<arch> into _output/debs/<arch>/ (kept), not installed: the integration
#           tests build their <arch> busybox image from its bin/busybox.
#   runc    static runc (RUNC_VERSION) into _output/runc/<arch>/runc (kept: skipped when built
#           with the same version and tags).
#   agent   the static guest agent into _output/agent/<arch>/vz-agent.
#   image   cmd/vz-guest: kernel + rootfs (a read-only ext4 root disk) into _output/guest/<arch>/
#           from our kernel (the default), and kernel + initrd into _output/guest/<arch>/debian/
#           from Debian's kernel and its modules (the fallback: runtime options kernel and initrd).
#   check   builds the images a second time into a temporary directory and fails unless they are
#           byte-identical to those in _output/guest/<arch>/ (reproducibility).
#
# Environment: GO (default go), SOURCE_DATE_EPOCH (mtime of initramfs entries, default 0).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

RUNC_VERSION=v1.5.2
GO=${GO:-go}

usage() {
	echo "usage: hack/guest.sh deps|kernel|deb|busybox|runc|agent|image|check|all amd64|arm64" >&2
	exit 2
}
[ $# -eq 2 ] || usage
step=$1
arch=$2
# Kernel-style names, as an ARCH from the environment may hold.
case "$arch" in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
esac
case "$arch" in
amd64) triplet=x86_64-linux-gnu ;;
arm64) triplet=aarch64-linux-gnu ;;
*) usage ;;
esac
host_arch=$(dpkg --print-architecture 2>/dev/null || "$GO" env GOHOSTARCH)

deb_dir=$root/_output/debs/$arch
runc_dir=$root/_output/runc/$arch
agent_dir=$root/_output/agent/$arch
out_dir=$root/_output/guest/$arch
tool=$root/_output/bin/vz-guest

log() { echo "hack/guest.sh: $*" >&2; }

as_root() {
	if [ "$(id -u)" -ne 0 ]; then
		log "needs root to $1; run: sudo hack/guest.sh $step $arch"
		exit 1
	fi
}

# Whether the dpkg package (name or name:arch) is installed.
installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Adds a foreign dpkg architecture once; apt then needs fresh lists.
apt_updated=
add_arch() {
	[ "$1" = "$host_arch" ] && return 0
	dpkg --print-foreign-architectures | grep -qx "$1" && return 0
	as_root "add the $1 dpkg architecture"
	log "dpkg --add-architecture $1"
	dpkg --add-architecture "$1"
	apt_update
}

apt_update() {
	[ -n "$apt_updated" ] && return 0
	as_root "run apt-get update"
	apt-get update -q </dev/null
	apt_updated=1
}

step_deps() {
	# Qualified by architecture: with a foreign architecture added, a bare
	# name would match both packages.
	local h=$host_arch
	local pkgs=("gcc:$h" "libc6-dev:$h" "libseccomp-dev:$h")
	if [ "$arch" != "$host_arch" ]; then
		# The cross compiler only recommends a libc; take the multiarch one, where
		# libseccomp-dev:<arch> puts libseccomp.a too.
		pkgs+=("gcc-${triplet//_/-}:$h" "libc6-dev:$arch" "libseccomp-dev:$arch")
	fi
	# QEMU for the boot test in guest/.
	case "$arch" in
	amd64) pkgs+=("qemu-system-x86:$h") ;;
	arm64) pkgs+=("qemu-system-arm:$h") ;;
	esac
	local missing=()
	for p in "${pkgs[@]}"; do
		installed "$p" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	as_root "install ${missing[*]}"
	add_arch "$arch"
	apt_update
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# The versioned kernel package behind the linux-image-<arch> metapackage: the regular flavour
# (linux-image-6.1.0-NN-amd64), not -cloud-amd64 nor -rt-.
kernel_package() {
	apt-cache depends "linux-image-$arch:$arch" 2>/dev/null |
		awk -v a="$arch" '$1 ~ /Depends:$/ { sub(/:.*$/, "", $2); if ($2 ~ ("^linux-image-[0-9][^ ]*-" a "$") && $2 !~ /-(cloud|rt)-/) { print $2; exit } }'
}

step_deb() {
	if compgen -G "$deb_dir/linux-image-*_$arch.deb" >/dev/null; then
		return 0
	fi
	add_arch "$arch"
	local pkg
	pkg=$(kernel_package)
	if [ -z "$pkg" ]; then
		apt_update
		pkg=$(kernel_package)
	fi
	[ -n "$pkg" ] || { log "cannot resolve the kernel package of linux-image-$arch"; exit 1; }
	download "$pkg"
}

# Downloads the package pkg:<arch> into _output/debs/<arch>/ unless a .deb of it is there.
download() {
	local pkg=$1
	if compgen -G "$deb_dir/${pkg}_*_$arch.deb" >/dev/null; then
		return 0
	fi
	add_arch "$arch"
	mkdir -p "$deb_dir"
	local tmp
	tmp=$(mktemp -d "$deb_dir/.download.XXXXXX")
	log "apt-get download $pkg:$arch"
	# As root, apt's _apt sandbox user cannot write here: download as root, quietly.
	if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$arch" </dev/null); then
		# No package lists yet, or stale ones that point at a file the mirror no longer has.
		apt_update
		(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$arch" </dev/null)
	fi
	mv "$tmp"/*.deb "$deb_dir/"
	rmdir "$tmp"
}

deb_file() {
	local debs=("$deb_dir"/linux-image-*_"$arch".deb)
	[ -f "${debs[0]}" ] || { log "no kernel .deb in $deb_dir (run: hack/guest.sh deb $arch)"; exit 1; }
	[ ${#debs[@]} -eq 1 ] || { log "more than one kernel .deb in $deb_dir: ${debs[*]}"; exit 1; }
	echo "${debs[0]}"
}

# Static runc, built in runc's own module (its go.mod and go.sum, untouched by ours). The
# libpathrs tag (runc's default) needs a Rust library and stays off.
step_runc() {
	local tags="seccomp urfave_cli_no_docs netgo osusergo"
	local stamp="$runc_dir/.stamp"
	local want="runc $RUNC_VERSION tags=$tags"
	if [ -x "$runc_dir/runc" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
		return 0
	fi
	local cc=gcc libdir=/usr/lib/$triplet
	[ "$arch" = "$host_arch" ] || cc=$triplet-gcc
	if [ ! -f "$libdir/libseccomp.a" ]; then
		log "no static libseccomp for $arch ($libdir/libseccomp.a): run hack/guest.sh deps $arch"
		exit 1
	fi
	# runc's own module, from the module cache; its commit for `runc --version`.
	local info src commit
	info=$(cd / && GOFLAGS=-mod=mod GOWORK=off "$GO" mod download -json "github.com/opencontainers/runc@$RUNC_VERSION")
	src=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$info")
	commit=$(sed -n 's/^\t\t"Hash": "\(.*\)",$/\1/p' <<<"$info")
	[ -d "$src" ] || { log "cannot download runc $RUNC_VERSION"; exit 1; }
	mkdir -p "$runc_dir"
	log "building static runc $RUNC_VERSION for $arch (tags: $tags)"
	(cd "$src" && GOOS=linux GOARCH="$arch" CGO_ENABLED=1 CC="$cc" GOFLAGS= GOWORK=off \
		"$GO" build -trimpath -buildvcs=false -tags "$tags" \
		-ldflags "-s -w -X main.gitCommit=$commit -extldflags -static" \
		-o "$runc_dir/runc.tmp" .)
	mv "$runc_dir/runc.tmp" "$runc_dir/runc"
	echo "$want" >"$stamp"
}

step_agent() {
	mkdir -p "$agent_dir"
	GOOS=linux GOARCH="$arch" CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" \
		-o "$agent_dir/vz-agent" ./cmd/vz-agent
}

build_tool() {
	mkdir -p "$(dirname "$tool")"
	"$GO" build -o "$tool" ./cmd/vz-guest
}

kernel_file=$root/_output/kernel/$arch/kernel

# image DIR writes the image of our kernel into DIR and that of Debian's into DIR/debian.
image() {
	[ -f "$kernel_file" ] || { log "no $kernel_file (run: hack/guest.sh kernel $arch)"; exit 1; }
	"$tool" -kernel "$kernel_file" -rootfs -agent "$agent_dir/vz-agent" -runc "$runc_dir/runc" \
		-arch "$arch" -out "$1"
	"$tool" -deb "$(deb_file)" -agent "$agent_dir/vz-agent" -runc "$runc_dir/runc" \
		-arch "$arch" -out "$1/debian"
}

step_image() {
	build_tool
	image "$out_dir"
	# The guest runc's features, which the shim's Info reports (CRI reads recursive read-only
	# mounts from them). Only a runc of this machine's architecture can run here to say.
	if [ "$arch" = "$host_arch" ]; then
		"$runc_dir/runc" features >"$out_dir/runc-features.json.tmp"
		cp "$out_dir/runc-features.json.tmp" "$out_dir/debian/runc-features.json"
		mv "$out_dir/runc-features.json.tmp" "$out_dir/runc-features.json"
	else
		rm -f "$out_dir/runc-features.json" "$out_dir/debian/runc-features.json"
		log "no runc-features.json for $arch: its runc cannot run on $host_arch (the shim then reports no features)"
	fi
}

step_check() {
	build_tool
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	image "$tmp" >/dev/null
	local f a b
	for f in kernel rootfs debian/kernel debian/initrd; do
		a=$(sha256sum <"$out_dir/$f")
		b=$(sha256sum <"$tmp/$f")
		if [ "$a" != "$b" ]; then
			log "not reproducible: $f differs between two builds"
			exit 1
		fi
		echo "reproducible: $arch/$f sha256 ${a%% *}"
	done
}

case "$step" in
deps) step_deps ;;
kernel) hack/kernel.sh "$arch" ;;
deb) step_deb ;;
busybox) download busybox-static ;;
runc) step_runc ;;
agent) step_agent ;;
image) step_image ;;
check) step_check ;;
all)
	step_deps
	hack/kernel.sh "$arch"
	step_deb
	download busybox-static
	step_runc
	step_agent
	step_image
	;;
*) usage ;;
esac
