#!/usr/bin/env bash
# Builds nerdctl v2.2.1 into _output/nerdctl/bin/nerdctl from its unmodified upstream source in
# ../shared/third_party (the module proxy does not serve its nested module mod/tigron, so nerdctl
# cannot be built as a dependency: shared/TESTING.md). Inside its own tree its go.mod replaces
# tigron with ./mod/tigron; every other dependency comes from the module proxy. The archive is
# checked against SHA256SUMS. Quiet and quick when the binary of this archive is there already.
#
#   NERDCTL_TARBALL=path   another copy of the archive
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tarball=${NERDCTL_TARBALL:-$root/../shared/third_party/nerdctl-v2.2.1.tar.gz}
out=$root/_output/nerdctl

if [ ! -f "$tarball" ]; then
	echo "hack/nerdctl.sh: $tarball is missing (it comes with ../shared/third_party)" >&2
	exit 1
fi
sum=$(sha256sum "$tarball" | cut -d' ' -f1)
want=$(awk -v f="$(basename "$tarball")" '$2 == f { print $1 }' "$(dirname "$tarball")/SHA256SUMS" 2>/dev/null || true)
if [ -z "$want" ] || [ "$sum" != "$want" ]; then
	echo "hack/nerdctl.sh: $tarball: sha256 $sum does not match SHA256SUMS (${want:-no entry})" >&2
	exit 1
fi
if [ -x "$out/bin/nerdctl" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$sum" ]; then
	exit 0
fi

echo "hack/nerdctl.sh: building nerdctl from $(basename "$tarball")"
rm -rf "$out"
mkdir -p "$out/src" "$out/bin"
tar -xzf "$tarball" -C "$out/src" --strip-components=1
(cd "$out/src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build \
	-ldflags "-X github.com/containerd/nerdctl/v2/pkg/version.Version=v2.2.1 -X github.com/containerd/nerdctl/v2/pkg/version.Revision=0d1089396f017bb872ad40606b0d31ebdeaa828a" \
	-o "$out/bin/nerdctl" ./cmd/nerdctl)
rm -rf "$out/src"
echo "$sum" >"$out/stamp"
"$out/bin/nerdctl" --version
