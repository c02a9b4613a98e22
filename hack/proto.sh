#!/usr/bin/env bash
# Generates the Go code for every .proto file under api/ (one protoc call per directory).
#
#   hack/proto.sh           regenerate in place
#   hack/proto.sh --check   regenerate into a temporary directory and fail if the committed code
#                           differs, is missing, or has no .proto any more
#
# The plugins come from _output/tools/bin (hack/tools.sh). The committed code was generated with
# Debian 12's protoc (libprotoc 3.21.12); its version is written into every .pb.go header.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
expected_protoc="libprotoc 3.21.12"

mode=generate
case "${1:-}" in
	"") ;;
	--check) mode=check ;;
	*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

export PATH="$root/_output/tools/bin:$PATH"
for tool in protoc protoc-gen-go protoc-gen-go-ttrpc; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "hack/proto.sh: $tool not found; run 'make deps'" >&2
		exit 1
	fi
done
if [ "$(protoc --version)" != "$expected_protoc" ]; then
	echo "hack/proto.sh: warning: $(protoc --version) is not $expected_protoc; generated headers will differ" >&2
fi

module=$(awk '$1 == "module" { print $2; exit }' go.mod)

out="$root"
if [ "$mode" = check ]; then
	out=$(mktemp -d)
	trap 'rm -rf "$out"' EXIT
fi

mapfile -t dirs < <(find api -name '*.proto' -printf '%h\n' | sort -u)
for dir in "${dirs[@]}"; do
	protoc -I api -I /usr/include \
		--go_out="$out" --go_opt=module="$module" \
		--go-ttrpc_out="$out" --go-ttrpc_opt=module="$module" \
		"$dir"/*.proto
done

[ "$mode" = check ] || exit 0

stale=0
while IFS= read -r f; do
	if [ ! -f "$root/$f" ]; then
		echo "missing: $f (generated from a .proto but not committed)"
		stale=1
	elif ! cmp -s "$out/$f" "$root/$f"; then
		echo "stale: $f"
		diff -u "$root/$f" "$out/$f" | head -n 40 || true
		stale=1
	fi
done < <(cd "$out" && find . -type f -name '*.pb.go' | sed 's|^\./||' | sort)
while IFS= read -r f; do
	if [ ! -f "$out/$f" ]; then
		echo "orphan: $f (no .proto generates it any more)"
		stale=1
	fi
done < <(find api -type f -name '*.pb.go' | sort)

if [ "$stale" -ne 0 ]; then
	echo "proto-check: the generated code in api/ is out of date: run 'make proto' and commit the result" >&2
	exit 1
fi
echo "proto-check: api/ is up to date (${#dirs[@]} proto director$( [ ${#dirs[@]} -eq 1 ] && echo y || echo ies))"
