#!/usr/bin/env bash
# Installs the pinned Go tools into _output/tools/bin (never into GOPATH). Idempotent: a tool is
# reinstalled only when its stamp file for the pinned version is missing. Quiet when up to date.
#
#   hack/tools.sh            install what is missing
#   hack/tools.sh --bindir   print the absolute tools bin directory
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
tools_dir="$root/_output/tools"
bin_dir="$tools_dir/bin"
stamp_dir="$tools_dir/stamps"

# The protoc plugins must be the versions of the runtime modules in go.mod: their version is
# written into the generated headers, and make proto-check compares those byte for byte.
# staticcheck 2026.2.2 (v0.8.2) is the newest release; its go.mod targets Go 1.26 (2026.1 targets
# Go 1.25). It was checked against this tree with Go 1.26.8.
# registry is the real distribution registry (v3.1.2) the snapshotter's integration tests pull
# from on loopback; it is installed outside this module (its own go.mod), like staticcheck.
tools=(
	"protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go v1.36.12 google.golang.org/protobuf"
	"protoc-gen-go-ttrpc github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc v1.2.10 github.com/containerd/ttrpc"
	"staticcheck honnef.co/go/tools/cmd/staticcheck v0.8.2 -"
	"registry github.com/distribution/distribution/v3/cmd/registry v3.1.2 -"
)

if [ "${1:-}" = --bindir ]; then
	echo "$bin_dir"
	exit 0
fi

# The version a module has in go.mod's require block ("" if absent).
gomod_version() {
	awk -v m="$1" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' go.mod
}

mkdir -p "$bin_dir" "$stamp_dir"
for t in "${tools[@]}"; do
	read -r name pkg version module <<<"$t"
	if [ "$module" != - ]; then
		want=$(gomod_version "$module")
		if [ -n "$want" ] && [ "$want" != "$version" ]; then
			echo "hack/tools.sh: $name is pinned at $version but go.mod requires $module $want;" >&2
			echo "  update the pin in hack/tools.sh, then run 'make proto' and commit the regenerated api/." >&2
			exit 1
		fi
	fi
	stamp="$stamp_dir/$name@$version"
	[ -f "$stamp" ] && [ -x "$bin_dir/$name" ] && continue
	echo "hack/tools.sh: installing $pkg@$version"
	rm -f "$stamp_dir/$name@"*
	GOBIN="$bin_dir" GOFLAGS=-buildvcs=false go install "$pkg@$version"
	touch "$stamp"
done
