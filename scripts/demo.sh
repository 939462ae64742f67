#!/usr/bin/env bash
# Shows Strata's main job: two layers merged into one view, a write that
# copies a file up, a delete that leaves a whiteout, and the upper layer
# listed to show what happened. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only the binary the demo runs (the tests and benchmarks build the rest).
export STRATA_BUILD_FLAGS=${STRATA_BUILD_FLAGS:---product strata}
source scripts/setup.sh
STRATA=$PWD/.build/debug/strata
work=$(mktemp -d /tmp/strata-demo.XXXXXX)
cleanup() { mountpoint -q "$work/merged" && umount -l "$work/merged"; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
mkdir -p lower/etc upper work merged
echo "from lower" > lower/both.txt
echo "from upper" > upper/both.txt
echo "only below" > lower/lower-only.txt
echo "setting=1"  > lower/etc/app.conf
run() { echo "\$ $*"; "$@"; }

run "$STRATA" mount -o lowerdir=lower,upperdir=upper,workdir=work merged
run ls merged merged/etc
run cat merged/both.txt                 # the upper one wins
echo "\$ echo setting=2 >> merged/etc/app.conf    # a write copies the file up"
echo "setting=2" >> merged/etc/app.conf
run rm merged/lower-only.txt            # a delete leaves a whiteout
run ls merged
run cat merged/etc/app.conf
echo "# the lower layer is untouched:"
run cat lower/etc/app.conf
echo "# the upper layer holds the copy and the whiteout (a 0/0 character device):"
run ls -lR upper
run umount merged
