#!/usr/bin/env bash
# Builds crictl (cri-tools v1.37.0) from the module proxy into _output/crictl/bin/crictl, in a
# module of its own under _output (cri-tools' Kubernetes dependencies stay out of this module's
# go.mod). Quiet and quick when that version is built already.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=v1.37.0
out=$root/_output/crictl
if [ -x "$out/bin/crictl" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$version" ]; then
	exit 0
fi
echo "hack/crictl.sh: building crictl $version"
rm -rf "$out"
mkdir -p "$out/mod" "$out/bin"
cat >"$out/mod/go.mod" <<EOT
module crictlbuild

go $(go env GOVERSION | sed 's/^go//')
EOT
(cd "$out/mod" && GOFLAGS=-mod=mod go get "sigs.k8s.io/cri-tools/cmd/crictl@$version" &&
	CGO_ENABLED=0 go build -o "$out/bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
echo "$version" >"$out/stamp"
