#!/usr/bin/env bash
# Regenerates the Swift for Protos/*.proto into Sources/SnapshotService/Generated.
# Run by hand after changing a .proto, never in CI: it needs protoc (Debian's
# protobuf-compiler) and the two plugins built once outside the project:
#   mkdir /var/tmp/protogen && cd /var/tmp/protogen  (a package depending on
#   apple/swift-protobuf 1.39.0 and grpc/grpc-swift-protobuf 2.4.1), then
#   swift build -c release --product protoc-gen-swift
#   swift build -c release --product protoc-gen-grpc-swift-2
# PLUGINS=DIR names the directory holding both (default /var/tmp/protogen/.build/release).
set -euo pipefail
cd "$(dirname "$0")/.."
plugins=${PLUGINS:-/var/tmp/protogen/.build/release}
for p in protoc-gen-swift protoc-gen-grpc-swift-2; do
  [ -x "$plugins/$p" ] || { echo "generate-protos: $plugins/$p is missing (see this script's header)" >&2; exit 1; }
done
command -v protoc >/dev/null || { echo "generate-protos: protoc is missing: apt-get install protobuf-compiler" >&2; exit 1; }
out=Sources/SnapshotService/Generated
mkdir -p "$out"
protoc -I Protos -I /usr/include \
  --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$plugins/protoc-gen-grpc-swift-2" \
  --swift_out="$out" --swift_opt=Visibility=Public \
  --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Public,Client=false,Server=true \
  Protos/mount.proto Protos/snapshots.proto
echo "generate-protos: wrote $(ls "$out" | tr '\n' ' ')"
