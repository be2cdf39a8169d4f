#!/usr/bin/env bash
# Regenerates every committed protobuf file. Needs protoc (Debian package
# protobuf-compiler); the Go plugins are built at pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

if ! command -v protoc >/dev/null 2>&1; then
	echo "generate.sh: protoc not found; install it with: apt-get install -y protobuf-compiler" >&2
	exit 1
fi

bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
export PATH="$bin:$PATH"

for proto in $(git ls-files --cached --others --exclude-standard '*.proto' | sort); do
	dir="$(dirname "$proto")"
	args=(--proto_path="$dir" --go_out="$dir" --go_opt=paths=source_relative)
	if grep -q '^service ' "$proto"; then
		args+=(--go-grpc_out="$dir" --go-grpc_opt=paths=source_relative)
	fi
	protoc "${args[@]}" "$proto"
done
