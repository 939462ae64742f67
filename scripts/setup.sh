#!/usr/bin/env bash
# Installs what Strata needs on a fresh Debian machine (as root) and builds it.
# Safe to run again: packages already present are not fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(fuse3 util-linux mount e2fsprogs procps attr acl libarchive-dev zlib1g-dev liburing-dev podman buildah umoci skopeo runc zstd docker-registry apache2-utils openssl python3 containerd python3-grpcio python3-grpc-tools mergerfs unionfs-fuse btrfs-progs)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH=/opt/swift/usr/bin:$PATH
fi
command -v swift >/dev/null || { echo "setup: no Swift toolchain found (need Swift 6)" >&2; exit 1; }

swift build ${STRATA_BUILD_FLAGS:-} >&2
