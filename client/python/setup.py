"""Build hook: generates the gRPC stubs from the repository's proto/ folder.

The stubs are build outputs (never committed): build_py runs grpcio-tools'
protoc into the build folder (or into src/ for an editable install), and the
install requirements follow the generator's versions, because protobuf's
generated code refuses an older runtime and grpcio's an older grpcio.

The proto folder is found at $FLASHCORE_PROTO_DIR, else ../../proto (this
package lives at client/python/ of the FlashCore repository).
"""

import os
import re
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SERVICE_PROTO = "flashcore/v1/flashcore.proto"
# The evaluator for evolution loops (KernelEvolution); imports SERVICE_PROTO.
EVOLVE_PROTO = "flashcore/v1/evolve.proto"
HEALTH_PROTO = "grpc/health/v1/health.proto"


def proto_dir() -> Path:
    candidates = [os.environ.get("FLASHCORE_PROTO_DIR"), str(HERE.parent.parent / "proto")]
    for candidate in candidates:
        if candidate and (Path(candidate) / SERVICE_PROTO).is_file():
            return Path(candidate)
    sys.exit(
        "flashcore build: cannot find %s under $FLASHCORE_PROTO_DIR or %s; build the package "
        "from the FlashCore repository (pip install ./client/python)"
        % (SERVICE_PROTO, HERE.parent.parent / "proto")
    )


def generate(out: Path) -> None:
    """Writes out/flashcore/v1/{__init__,flashcore_pb2,flashcore_pb2_grpc}.py(+.pyi) and
    out/flashcore/_health.binpb (the grpc.health.v1 descriptor set, see flashcore/_stubs.py)."""
    import grpc_tools
    from grpc_tools import protoc

    includes = [str(proto_dir()), str(Path(grpc_tools.__file__).parent / "_proto")]
    (out / "flashcore" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc"] + ["-I" + path for path in includes]
    rc = protoc.main(
        args
        + ["--python_out=" + str(out), "--pyi_out=" + str(out), "--grpc_python_out=" + str(out)]
        + [SERVICE_PROTO, EVOLVE_PROTO]
    )
    if rc != 0:
        sys.exit("flashcore build: protoc failed on %s (exit %d)" % (SERVICE_PROTO, rc))
    rc = protoc.main(args + ["--descriptor_set_out=" + str(out / "flashcore" / "_health.binpb")]
                     + [HEALTH_PROTO])
    if rc != 0:
        sys.exit("flashcore build: protoc failed on %s (exit %d)" % (HEALTH_PROTO, rc))
    (out / "flashcore" / "v1" / "__init__.py").write_text(
        '"""Generated from proto/flashcore/v1/flashcore.proto at build time."""\n'
    )


def requirements() -> list:
    """grpcio and protobuf no older than the generator that writes the stubs."""
    from importlib.metadata import version

    grpc_version = version("grpcio-tools")
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        text = (Path(tmp) / "flashcore" / "v1" / "flashcore_pb2.py").read_text()
    # ValidateProtobufRuntimeVersion(_runtime_version.Domain.PUBLIC, 6, 31, 1, '', ...)
    match = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+)", text)
    if match:
        major, minor, patch = (int(g) for g in match.groups())
        protobuf = "protobuf>=%d.%d.%d,<%d" % (major, minor, patch, major + 1)
    else:  # generators before protobuf 5 wrote no runtime check
        protobuf = "protobuf>=%s" % version("protobuf")
    return ["grpcio>=" + grpc_version, protobuf]


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            generate(HERE / "src")
        else:
            generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs}, install_requires=requirements())
