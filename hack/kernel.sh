#!/usr/bin/env bash
# Builds the guest kernel of containerd-shim-vz for one architecture from Debian's
# linux-source-6.12 package (Debian's patches and security fixes) and the config fragments in
# guest/kconfig/, into _output/kernel/<arch>/{kernel,release,config}.
#
#   hack/kernel.sh amd64|arm64
#
# The config is `make tinyconfig`, then guest/kconfig/common.config and <arch>.config merged with
# the kernel's scripts/kconfig/merge_config.sh, then olddefconfig; the build fails unless every
# symbol the fragments set has that value in the final .config (a symbol whose dependencies are
# off silently stays off otherwise). Everything is built in; there are no modules.
#
# Builds are cached outside the checkout, in KERNEL_CACHE (default /var/cache/containerd-vz/kernel
# as root, else ~/.cache/containerd-vz/kernel), keyed by the source package's version, the
# architecture, the fragments, the compiler and this script: a CI machine rebuilds only when one
# of them changes. Builds are reproducible: fixed KBUILD_BUILD_TIMESTAMP, _USER, _HOST, _VERSION.
#
# amd64's kernel is the bzImage (hack/guest.sh and cmd/vz-guest ship the vmlinux inside it, which
# QEMU boots through its PVH entry); arm64's is the uncompressed Image that VZ requires.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

SOURCE_PACKAGE=linux-source-6.12

log() { echo "hack/kernel.sh: $*" >&2; }

[ $# -eq 1 ] || { echo "usage: hack/kernel.sh amd64|arm64" >&2; exit 2; }
arch=$1
case "$arch" in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
esac
case "$arch" in
amd64) karch=x86_64 image=arch/x86/boot/bzImage target=bzImage cross=x86_64-linux-gnu- ;;
arm64) karch=arm64 image=arch/arm64/boot/Image target=Image cross=aarch64-linux-gnu- ;;
*) echo "usage: hack/kernel.sh amd64|arm64" >&2; exit 2 ;;
esac
host_arch=$(dpkg --print-architecture)
[ "$arch" != "$host_arch" ] || cross=

if [ -n "${KERNEL_CACHE:-}" ]; then
	cache=$KERNEL_CACHE
elif [ "$(id -u)" -eq 0 ]; then
	cache=/var/cache/containerd-vz/kernel
else
	cache=${XDG_CACHE_HOME:-$HOME/.cache}/containerd-vz/kernel
fi
out=$root/_output/kernel/$arch
frags=("$root/guest/kconfig/common.config" "$root/guest/kconfig/$arch.config")

installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# What a kernel build needs from Debian, installed only when missing.
deps() {
	local pkgs=(make gcc flex bison bc libelf-dev libssl-dev xz-utils dpkg-dev)
	[ -z "$cross" ] || pkgs+=("gcc-${cross%-}")
	pkgs=("${pkgs[@]//_/-}")
	local missing=() p
	for p in "${pkgs[@]}"; do
		installed "$p" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		log "needs root to install ${missing[*]}"
		exit 1
	fi
	log "installing ${missing[*]}"
	apt-get update -q </dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# The source package's .deb in the cache (downloaded once), and its version.
source_deb() {
	local debs=("$cache"/${SOURCE_PACKAGE}_*_all.deb)
	if [ ! -f "${debs[0]}" ]; then
		local tmp
		tmp=$(mktemp -d "$cache/.download.XXXXXX")
		log "apt-get download $SOURCE_PACKAGE"
		# apt's output goes to stderr: this function's stdout is the .deb's path.
		if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$SOURCE_PACKAGE" </dev/null >&2); then
			apt-get update -q </dev/null >&2
			(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$SOURCE_PACKAGE" </dev/null >&2)
		fi
		mv "$tmp"/*.deb "$cache/"
		rmdir "$tmp"
		debs=("$cache"/${SOURCE_PACKAGE}_*_all.deb)
	fi
	# The newest, should an update have brought a second one.
	local newest=${debs[0]} d
	for d in "${debs[@]}"; do
		if dpkg --compare-versions "$(dpkg-deb -f "$d" Version)" gt "$(dpkg-deb -f "$newest" Version)"; then
			newest=$d
		fi
	done
	echo "$newest"
}

# Unpacks the kernel tree of deb into $cache/src/<version>/ once.
source_tree() {
	local deb=$1 version=$2
	local dir=$cache/src/$version
	if [ -f "$dir/.complete" ]; then
		echo "$dir"
		return 0
	fi
	log "unpacking $(basename "$deb")"
	rm -rf "$dir" "$dir.tmp"
	mkdir -p "$dir.tmp"
	dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards "./usr/src/$SOURCE_PACKAGE.tar.*" |
		tar -xJ -C "$dir.tmp" --strip-components=1
	touch "$dir.tmp/.complete"
	mv "$dir.tmp" "$dir"
	echo "$dir"
}

# Fails unless every CONFIG_ line of the fragments is in config as written ("is not set" lines:
# the symbol is not =y/=m there).
check_config() {
	local config=$1 bad=0 line sym
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			if ! grep -qxF -- "$line" "$config"; then
				log "asked for $line, but .config has: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo "(nothing)")"
				bad=1
			fi
			;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			if grep -qE "^$sym=" "$config"; then
				log "asked for $sym off, but .config has: $(grep -E "^$sym=" "$config")"
				bad=1
			fi
			;;
		esac
	done < <(cat "${frags[@]}")
	[ "$bad" -eq 0 ] || { log "the config fragments ask for symbols the kernel config did not take (see above)"; exit 1; }
}

build() {
	local src=$1 dir=$2
	# Kept between builds of one source version: when only the fragments change, kbuild
	# rebuilds just what depends on the symbols that changed.
	local obj=$cache/build/$version-$arch
	mkdir -p "$obj"
	local mk=(make -C "$src" O="$obj" ARCH="$karch" CROSS_COMPILE="$cross"
		KBUILD_BUILD_TIMESTAMP="$timestamp" KBUILD_BUILD_USER=containerd-vz
		KBUILD_BUILD_HOST=containerd-vz KBUILD_BUILD_VERSION=1)
	"${mk[@]}" -s tinyconfig
	(cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${frags[@]}" >/dev/null)
	"${mk[@]}" -s olddefconfig
	check_config "$obj/.config"
	local start=$SECONDS
	log "building $target for $arch in $obj ($(nproc) jobs)"
	"${mk[@]}" -s -j"$(nproc)" "$target"
	log "built $arch kernel in $((SECONDS - start)) s"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	cp "$obj/$image" "$dir.tmp/kernel"
	cp "$obj/.config" "$dir.tmp/config"
	"${mk[@]}" -s kernelrelease >"$dir.tmp/release"
	mv "$dir.tmp" "$dir"
}

deps
mkdir -p "$cache"
# One build at a time per cache: two runs that want the same kernel make it once.
exec 9>"$cache/.lock"
flock 9

deb=$(source_deb)
version=$(dpkg-deb -f "$deb" Version)
# The kernel's build date: the source package's (its control files' mtime), so equal inputs give
# equal bytes. awk reads all its input: an early exit would fail the pipe.
timestamp="$(dpkg-deb --ctrl-tarfile "$deb" | tar -tv --full-time | awk 'NR == 1 { d = $4 " " $5 } END { print d }') UTC"
key=$( {
	echo "$version $arch"
	cat "${frags[@]}" "$0"
	"${cross}gcc" --version | head -1
} | sha256sum | cut -c1-16)
dir=$cache/$version-$arch-$key
if [ ! -f "$dir/kernel" ]; then
	src=$(source_tree "$deb" "$version")
	build "$src" "$dir"
else
	log "cached: $dir"
fi
mkdir -p "$out"
for f in kernel release config; do
	cp "$dir/$f" "$out/$f.tmp"
	mv "$out/$f.tmp" "$out/$f"
done
echo "kernel $(cat "$out/release") ($arch): $out/kernel, $(du -h "$out/kernel" | cut -f1)"
