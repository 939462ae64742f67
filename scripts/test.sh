#!/usr/bin/env bash
# Runs every test of Strata, the ones that mount for real included.
# Needs root and /dev/fuse; installs its packages and builds first.
# Fails when any test was skipped: a mount test that skips proves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "test: run as root (mount tests need it): sudo $0" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "test: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

# The image fixtures live beside the checkout (../shared/fixtures); a clone
# made elsewhere finds them beside the repository it was cloned from.
find_fixtures() {
  local c origin
  for c in "${STRATA_FIXTURES:-}" "$PWD/../shared/fixtures"; do
    [ -n "$c" ] && [ -f "$c/busybox-l3.docker.tar" ] && { (cd "$c" && pwd); return; }
  done
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  if [ -n "$origin" ] && [ -d "$origin" ] && [ -f "$origin/../shared/fixtures/busybox-l3.docker.tar" ]; then
    (cd "$origin/../shared/fixtures" && pwd); return
  fi
  return 1
}
STRATA_FIXTURES=$(find_fixtures) || {
  echo "test: the image fixtures (busybox-l3.docker.tar, busybox-l3.oci.tar) are not in ../shared/fixtures; set STRATA_FIXTURES=DIR" >&2
  exit 1
}
export STRATA_FIXTURES

log=$(mktemp /tmp/strata-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
set +e
STRATA_REQUIRE_MOUNT=1 swift test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -Eq "Test .* skipped|skipped after" "$log"; then
  echo "test: some tests were skipped; every test must run here:" >&2
  grep -E "skipped" "$log" >&2
  exit 1
fi
ran=$(grep -Eo "Test run with [0-9]+ tests" "$log" | grep -Eo "[0-9]+" | tail -1)
if [ "${ran:-0}" -lt 20 ]; then
  echo "test: only ${ran:-0} tests ran; expected the whole suite" >&2
  exit 1
fi
exit "$status"
