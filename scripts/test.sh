#!/usr/bin/env bash
# Runs every test of Strata, the ones that mount for real included.
# Needs root and /dev/fuse; installs its packages and builds first.
# Fails when any test was skipped: a mount test that skips proves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "test: run as root (mount tests need it): sudo $0" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "test: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

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
