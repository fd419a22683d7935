#!/usr/bin/env bash
# The Python package for the GPU box, installed ahead into build/pydev (the box
# has Python 3.12 and no grpcio-tools): grpcio and protobuf wheels for 3.12 at
# the versions of this checkout's venv (the generated stubs refuse an older
# grpcio), plus the flashcore package built here. Carry build/pydev.
#   bash bench/device/make_pydev.sh      (repo root, after ./deploy/setup.sh)
set -euo pipefail
venv=build/python-venv/bin/python
grpc=$($venv -c 'import grpc; print(grpc.__version__)')
proto=$($venv -c 'import google.protobuf as p; print(p.__version__)')
rm -rf build/pydev
python3 -m pip install -q --target build/pydev --platform manylinux2014_x86_64 --python-version 3.12 \
  --only-binary=:all: "grpcio==$grpc" "protobuf==$proto"
$venv -m pip install -q --no-deps --target build/pydev ./client/python
echo "build/pydev: grpcio $grpc, protobuf $proto, flashcore from client/python"
