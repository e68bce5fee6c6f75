#!/usr/bin/env bash
# Builds what the compose stack runs, with no registry: static binaries
# (CGO off) into bin/docker/rootfs, the credentials (once) into
# deploy/secrets, then the image mesh:dev FROM scratch.
#
#   scripts/build.sh            binaries, credentials, image
#   scripts/build.sh --no-image binaries and credentials only
#
# Binaries: mesh (./cmd/mesh), nats-server (the module version go.mod pins),
# worker (./examples/worker) and healthz (./deploy/healthz, the NATS
# containers' health check). Environment: MESH_IMAGE (default mesh:dev).
set -euo pipefail

cd "$(dirname "$0")/.."
image=${MESH_IMAGE:-mesh:dev}
build_image=1
for arg in "$@"; do
	case $arg in
	--no-image) build_image="" ;;
	*) echo "usage: scripts/build.sh [--no-image]" >&2; exit 2 ;;
	esac
done

out=bin/docker
rm -rf "$out"
mkdir -p "$out/rootfs" "$out/data"
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
export CGO_ENABLED=0
flags=(-trimpath -ldflags "-s -w")

echo "build: mesh $version" >&2
go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out/rootfs/mesh" ./cmd/mesh
echo "build: nats-server $(go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)" >&2
go build "${flags[@]}" -o "$out/rootfs/nats-server" github.com/nats-io/nats-server/v2
echo "build: worker, healthz" >&2
go build "${flags[@]}" -o "$out/rootfs/worker" ./examples/worker
(cd deploy && go build "${flags[@]}" -o "../$out/rootfs/healthz" ./healthz)

# The credentials: made once, kept across builds (deploy/secrets is ignored
# by git and never enters the image).
(cd deploy && go run ./gencreds -dir secrets)

if [ -n "$build_image" ]; then
	echo "build: image $image" >&2
	docker build -q -t "$image" . >/dev/null
	docker image ls "$image" --format 'build: {{.Repository}}:{{.Tag}} {{.Size}}' >&2
fi
