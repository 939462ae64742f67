#!/usr/bin/env bash
# Shows Strata's main job on an example: a directory mirrored through
# Strata's FUSE layer, written to through the mount, then unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
STRATA=$PWD/.build/debug/strata
work=$(mktemp -d /tmp/strata-demo.XXXXXX)
cleanup() { mountpoint -q "$work/mnt" && umount -l "$work/mnt"; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/src/etc" "$work/mnt"
echo "hello from the source" > "$work/src/hello.txt"
echo "setting=1" > "$work/src/etc/app.conf"

echo "\$ strata loopback $work/src $work/mnt"
"$STRATA" loopback "$work/src" "$work/mnt"
echo "\$ grep $work/mnt /proc/mounts"; grep "$work/mnt" /proc/mounts
echo "\$ ls -l mnt"; ls -l "$work/mnt"
echo "\$ cat mnt/hello.txt"; cat "$work/mnt/hello.txt"
echo "\$ echo written through the mount > mnt/new.txt"; echo "written through the mount" > "$work/mnt/new.txt"
echo "\$ cat src/new.txt   # it reached the source"; cat "$work/src/new.txt"
echo "\$ umount mnt"; umount "$work/mnt"
