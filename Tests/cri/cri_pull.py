#!/usr/bin/python3
"""PullImage through containerd's CRI plugin, as the kubelet asks it.
Usage: cri_pull.py SOCKET IMAGE. Prints the image ref; exits 1 with the
gRPC error on failure."""
import atexit
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc

here = os.path.dirname(os.path.abspath(__file__))
out = tempfile.mkdtemp(prefix="strata-cri-")
# The generated modules go with the run, not into /tmp for good.
atexit.register(shutil.rmtree, out, True)
if protoc.main(["protoc", "-I" + here, "--python_out=" + out, "--grpc_python_out=" + out, "cri_image.proto"]) != 0:
    sys.exit("cri_pull: cannot compile cri_image.proto")
sys.path.insert(0, out)
import cri_image_pb2  # noqa: E402
import cri_image_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel("unix://" + sys.argv[1])
stub = cri_image_pb2_grpc.ImageServiceStub(channel)
try:
    r = stub.PullImage(cri_image_pb2.PullImageRequest(image=cri_image_pb2.ImageSpec(image=sys.argv[2])), timeout=120)
except grpc.RpcError as e:
    sys.exit("cri_pull: %s: %s" % (e.code(), e.details()))
print(r.image_ref)
