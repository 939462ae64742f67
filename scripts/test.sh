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

# What the kernel and the mount table are here, for reading a failure later:
# a shared / lets the mount namespaces podman and runc make hold our mounts.
echo "test: kernel $(uname -r); / is mounted $(findmnt -n -o PROPAGATION / 2>/dev/null || echo '(propagation unknown)'); FUSE over io_uring switch: $(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null || echo absent)" >&2

log=$(mktemp /tmp/strata-test-log.XXXXXX)
switch=/sys/module/fuse/parameters/enable_uring
saved_switch=""
stats=""
restore() {
  rm -f "$log"
  # The io_uring pass's statistics, when that pass failed before removing them.
  if [ -n "$stats" ]; then rm -f "$stats"; fi
  # The kernel's io_uring opt-in goes back to what it was.
  if [ -n "$saved_switch" ]; then echo "$saved_switch" > "$switch"; fi
}
trap restore EXIT

# One pass of the whole suite; fails on a failure, a skip, or a short run.
run_pass() {
  local name=$1; shift
  local started=$SECONDS
  echo "test: pass '$name'" >&2
  set +e
  env "$@" STRATA_REQUIRE_MOUNT=1 swift test ${pass_flags:-} 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  set -e
  if grep -Eq "Test .* skipped|skipped after" "$log"; then
    echo "test: some tests were skipped in pass '$name'; every test must run here:" >&2
    grep -E "skipped" "$log" >&2
    exit 1
  fi
  local ran
  ran=$(grep -Eo "Test run with [0-9]+ tests" "$log" | grep -Eo "[0-9]+" | tail -1)
  if [ "${ran:-0}" -lt 20 ]; then
    echo "test: only ${ran:-0} tests ran in pass '$name'; expected the whole suite" >&2
    exit 1
  fi
  echo "test: pass '$name' took $((SECONDS - started)) s" >&2
  [ "$status" = 0 ] || { echo "test: pass '$name' failed" >&2; exit "$status"; }
}

# Pass 1: the default transport (/dev/fuse unless the kernel offers io_uring).
run_pass "default transport"

# Pass 2: every mount on FUSE over io_uring (uring=on). The kernel switch
# only lets a daemon opt in; it is set for the pass and restored after.
if [ ! -e "$switch" ]; then
  if [ "${STRATA_ALLOW_NO_URING:-}" = 1 ]; then
    echo "test: this kernel has no FUSE over io_uring ($switch); the io_uring pass is not run" >&2
    exit 0
  fi
  echo "test: this kernel has no FUSE over io_uring ($switch missing; needs 6.14+ with CONFIG_FUSE_IO_URING); STRATA_ALLOW_NO_URING=1 runs the first pass only" >&2
  exit 1
fi
saved_switch=$(cat "$switch")
echo Y > "$switch"
# Every daemon of the pass appends its last statistics: the pass counts
# only if the rings did serve (a refused registration falls back quietly).
stats=$(mktemp /tmp/strata-test-stats.XXXXXX)
pass_flags=--skip-build run_pass "io_uring" STRATA_URING=on STRATA_STATS_AT_EXIT="$stats"
daemons=$(grep -c '"transport"' "$stats" || true)
on_rings=$(grep -c '"transport": "io_uring' "$stats" || true)
served=$(grep -o '"ring_requests": [0-9]*' "$stats" | awk '{s += $2} END {print s + 0}')
rm -f "$stats"
echo "test: io_uring pass: $on_rings of $daemons daemons on the rings, $served requests served there" >&2
# A few daemons are meant to fall back (the refused-registration test).
if [ "${daemons:-0}" -lt 20 ] || [ "$served" -lt 10000 ] || [ $((on_rings * 10)) -lt $((daemons * 9)) ]; then
  echo "test: the io_uring pass did not serve through the rings ($served requests from $daemons daemons)" >&2
  exit 1
fi

# Pass 3: the union's tests against the release binaries, which are what
# users run: cross-module inlining happens only there, and one defect (the
# forked daemon's main thread trapping in Swift's Mutex at exit) showed in
# release builds alone.
echo "test: building the release binaries" >&2
swift build -c release --product strata-overlay
swift build -c release --product strata
pass_flags="--skip-build --filter OverlayTests" run_pass "release binaries" STRATA_BIN="$PWD/.build/release/strata"
