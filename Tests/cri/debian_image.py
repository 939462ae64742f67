#!/usr/bin/python3
"""Writes a docker-save archive of a small Debian tree made of this
machine's own Debian packages, as dpkg unpacked them (no network, unlike
debootstrap): layer 1 holds base-files, libc6 and dash with the usrmerge
links (/bin -> usr/bin ...), layer 2 coreutils, grep and sed.
Usage: debian_image.py OUT.tar TAG"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

out, tag = sys.argv[1], sys.argv[2]
layers = [["base-files", "libc6", "dash"], ["coreutils", "grep", "sed"]]


def files(packages):
    listed = subprocess.run(["dpkg", "-L"] + packages, check=True, capture_output=True, text=True).stdout.split("\n")
    names = set()
    for p in listed:
        if not p.startswith("/") or p == "/.":
            continue
        # dpkg may list a path through a usrmerge link (/bin/cat): the file
        # is where its directory really is.
        real = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if os.path.lexists(real) and not os.path.isdir(real) or (os.path.isdir(real) and not os.path.islink(real)):
            names.add(real)
    return names


def layer(packages, top):
    buf = io.BytesIO()
    t = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    done = set()

    def add(path):
        if path in done or path == "/":
            return
        parent = os.path.dirname(path)
        if parent != "/":
            add(parent)
        done.add(path)
        t.add(path, arcname=path.lstrip("/"), recursive=False)

    if top:
        for link in ["bin", "lib", "lib64", "sbin"]:
            if os.path.islink("/" + link):
                add("/" + link)
        for name, text in [("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", b"root:x:0:\n")]:
            add("/etc")
            i = tarfile.TarInfo(name)
            i.size = len(text)
            i.mode = 0o644
            t.addfile(i, io.BytesIO(text))
    for f in sorted(files(packages)):
        add(f)
    t.close()
    return buf.getvalue()


blobs = [layer(p, i == 0) for i, p in enumerate(layers)]
diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cid = hashlib.sha256(cfg).hexdigest()
o = tarfile.open(out, "w")


def put(n, d):
    i = tarfile.TarInfo(n)
    i.size = len(d)
    o.addfile(i, io.BytesIO(d))


put(cid + ".json", cfg)
for i, b in enumerate(blobs):
    put("l%d/layer.tar" % i, b)
put("manifest.json", json.dumps([{"Config": cid + ".json", "RepoTags": [tag],
                                  "Layers": ["l%d/layer.tar" % i for i in range(len(blobs))]}]).encode())
o.close()
print(sum(len(b) for b in blobs))
