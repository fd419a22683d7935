"""The one exception type of the client."""

from typing import Optional

import grpc


class FlashCoreError(Exception):
    """A failed call: the gRPC status code, the server's message and its detail.

    ``code`` is a ``grpc.StatusCode`` (``code.name`` is "INVALID_ARGUMENT",
    "NOT_FOUND", ...). ``message`` is the first line of the server's status
    message, prefixed with the RPC (``"Compile: problem.head_dim: 80 is not
    supported ..."``). ``detail`` is what the server sent beside it, such as
    the NVRTC log of a failed compile ("" when none), as the C++ client reports
    it: the status details, else the message's lines after the first.
    """

    def __init__(self, code: grpc.StatusCode, message: str, detail: str = "",
                 rpc: Optional[str] = None):
        self.code = code
        self.message = message
        self.detail = detail
        self.rpc = rpc
        super().__init__(message)

    def __str__(self) -> str:
        return "%s (%s)" % (self.message, self.code.name)

    @classmethod
    def from_rpc_error(cls, rpc: str, error: grpc.RpcError, address: str) -> "FlashCoreError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        text = (error.details() if hasattr(error, "details") else str(error)) or ""
        detail = ""
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == "grpc-status-details-bin":
                detail = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        first, newline, rest = text.partition("\n")
        if newline and not detail:
            detail = rest
        if code == grpc.StatusCode.UNAVAILABLE:
            first = "cannot reach flashcored at %s: %s" % (address, first)
        return cls(code, "%s: %s" % (rpc, first), detail, rpc)
