"""The generated gRPC code, imported in one place with a clear error when it is missing.

flashcore.v1.flashcore_pb2 and flashcore_pb2_grpc are protoc's output for
proto/flashcore/v1/flashcore.proto (package flashcore.v1 maps onto this
package's v1/ subpackage), written when the package is built.

grpc.health.v1 is served too, but its generated Python module would be
`grpc.health.v1.health_pb2`, inside grpcio's own `grpc` package, and the
same message names are registered by grpcio-health-checking: two copies in
protobuf's default descriptor pool are a "duplicate symbol" error at import.
So the build writes health.proto's descriptor set (_health.binpb) and the two
health messages are made from it in a private pool, conflicting with nothing.
"""

from importlib import resources

try:
    from flashcore.v1 import flashcore_pb2 as pb  # noqa: F401  (re-exported)
    from flashcore.v1 import flashcore_pb2_grpc as pb_grpc  # noqa: F401
    from flashcore.v1 import evolve_pb2 as epb  # noqa: F401  (KernelEvolution)
    from flashcore.v1 import evolve_pb2_grpc as epb_grpc  # noqa: F401
except ImportError as error:  # pragma: no cover - only in a source tree without a build
    raise ImportError(
        "flashcore's generated gRPC stubs are missing (flashcore.v1.flashcore_pb2); they are "
        "written when the package is built: install it with `pip install ./client/python` "
        "rather than importing client/python/src directly (%s)" % error
    ) from error

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _health_messages():
    data = resources.files("flashcore").joinpath("_health.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))
    return request, response


HealthCheckRequest, HealthCheckResponse = _health_messages()
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


def serving_status_name(response) -> str:
    """'SERVING', 'NOT_SERVING', 'UNKNOWN' or 'SERVICE_UNKNOWN', as the CLI prints it."""
    field = response.DESCRIPTOR.fields_by_name["status"]
    value = field.enum_type.values_by_number.get(response.status)
    return value.name if value is not None else str(response.status)
