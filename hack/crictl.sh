#!/usr/bin/env bash
# Builds crictl and critest (cri-tools v1.37.0, critest as `go test -c` of its cmd/critest) and
# the ginkgo CLI that critest's -parallel runs (the version cri-tools pins) from the module proxy
# into _output/crictl/bin, in a module of its own under _output (cri-tools' Kubernetes
# dependencies stay out of this module's go.mod). Quiet and quick when they are built already.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=v1.37.0
ginkgo=v2.32.1 # cri-tools v1.37.0's go.mod
stamp="$version ginkgo $ginkgo"
out=$root/_output/crictl
if [ -x "$out/bin/crictl" ] && [ -x "$out/bin/critest" ] && [ -x "$out/bin/ginkgo" ] &&
	[ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
	exit 0
fi
echo "hack/crictl.sh: building crictl and critest $version, ginkgo $ginkgo"
rm -rf "$out"
mkdir -p "$out/mod" "$out/bin"
cat >"$out/mod/go.mod" <<EOT
module crictlbuild

go $(go env GOVERSION | sed 's/^go//')
EOT
(cd "$out/mod" && GOFLAGS=-mod=mod go get "sigs.k8s.io/cri-tools/cmd/crictl@$version" &&
	GOFLAGS=-mod=mod go get -t "sigs.k8s.io/cri-tools/cmd/critest@$version" &&
	GOFLAGS=-mod=mod go get "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo" &&
	CGO_ENABLED=0 go build -o "$out/bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl &&
	CGO_ENABLED=0 go test -c -o "$out/bin/critest" sigs.k8s.io/cri-tools/cmd/critest &&
	CGO_ENABLED=0 go build -o "$out/bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
echo "$stamp" >"$out/stamp"
