"""flashcore.Client: one method per RPC of flashcore.v1.FlashCore, plus health()."""

import os
import threading
from typing import Iterator, Optional, Union

import grpc

from . import messages
from ._stubs import (HEALTH_CHECK_METHOD, HealthCheckRequest, HealthCheckResponse, pb, pb_grpc,
                     serving_status_name)
from .errors import FlashCoreError
from .evolve import EvolutionMethods

# The C++ CLI's and client library's defaults (client/cli/main.cpp,
# client/include/flashcore/client.hpp).
DEFAULT_ADDRESS = "127.0.0.1:50051"
# The CLI's --timeout-ms default: a cold compile takes seconds.
DEFAULT_TIMEOUT_S = 300.0
# Handles carry cubins (hundreds of KB); the daemon's own limit is
# max_message_mb (64 by default).
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

_UNSET = object()


class TuneStream:
    """The progress of one Tune call: iterate it for flashcore.v1.TuneProgress events.

    Events come in the daemon's order: ``queued``, ``started``, one ``trial``
    per candidate, ``best`` on each improvement, then ``done`` with the
    TuningResult, which is also kept in :attr:`result`. ``event.WhichOneof
    ("event")`` names the kind. :meth:`cancel` (from any thread) cancels the
    call, and with it the job on the daemon; iteration then ends without an
    error. Any other failure is raised from the iteration as FlashCoreError
    (FAILED_PRECONDITION from a daemon without GPU workers, for one).
    """

    def __init__(self, call, address: str):
        self._call = call
        self._address = address
        self._cancelled = threading.Event()
        self.result: Optional[pb.TuningResult] = None

    def __iter__(self) -> Iterator[pb.TuneProgress]:
        try:
            for event in self._call:
                if event.WhichOneof("event") == "done":
                    self.result = event.done
                yield event
        except grpc.RpcError as error:
            if self._cancelled.is_set() and error.code() == grpc.StatusCode.CANCELLED:
                return
            raise FlashCoreError.from_rpc_error("Tune", error, self._address) from None

    def cancel(self) -> None:
        """Cancels the call; the daemon stops the job (recorded as cancelled)."""
        self._cancelled.set()
        self._call.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait(self) -> Optional[pb.TuningResult]:
        """Drains the stream; the TuningResult, or None if cancelled before it came."""
        for _ in self:
            pass
        return self.result

    def __enter__(self) -> "TuneStream":
        return self

    def __exit__(self, *exc) -> None:
        if self.result is None:
            self.cancel()


class Client(EvolutionMethods):
    """A connection to flashcored.

    ``address`` defaults to $FLASHCORE_ADDRESS, else 127.0.0.1:50051 (as the
    CLI). ``timeout`` (seconds) is the deadline of each call unless a method is
    given its own; None means no deadline. The channel connects lazily: an
    unreachable daemon is reported by the first call (FlashCoreError with
    code UNAVAILABLE). Results are the generated protobuf messages of
    flashcore.v1 (typed through the generated .pyi files): KernelHandle,
    ListKernelsResponse, ServerInfo, TuningResult, ListTuningResultsResponse.
    Methods that take a request accept the message, or keyword arguments for
    :func:`flashcore.kernel_request` (``dtype``, ``head_dim``, ``seq_q``,
    ``heads``, ``config``, ``arch``, ...). Thread-safe.

    On a shared box (README "Running on a shared box"): ``token`` (default
    $FLASHCORE_TOKEN) is sent as ``authorization: Bearer <token>`` with every
    call; ``tls_ca`` (default $FLASHCORE_TLS_CA), a PEM file of the CA that
    signed the daemon's certificate, makes the channel TLS.

    KernelEvolution (the evaluator for evolution loops): ``evaluate_source``,
    ``list_candidates``/``iter_candidates``, ``get_candidate`` and
    ``promote_candidate`` (flashcore/evolve.py).
    """

    def __init__(self, address: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT_S,
                 *, channel: Optional[grpc.Channel] = None, token: Optional[str] = None,
                 tls_ca: Optional[str] = None):
        self.address = address or os.environ.get("FLASHCORE_ADDRESS") or DEFAULT_ADDRESS
        self.timeout = timeout
        token = token if token is not None else os.environ.get("FLASHCORE_TOKEN", "")
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        tls_ca = tls_ca if tls_ca is not None else os.environ.get("FLASHCORE_TLS_CA", "")
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if channel is None and tls_ca:
            with open(tls_ca, "rb") as pem:
                credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
            channel = grpc.secure_channel(self.address, credentials, options=options)
        self._channel = channel or grpc.insecure_channel(self.address, options=options)
        self._stub = pb_grpc.FlashCoreStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK_METHOD, request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return "flashcore.Client(%r)" % self.address

    # -- helpers ------------------------------------------------------------

    def _deadline(self, timeout):
        return self.timeout if timeout is _UNSET else timeout

    def _call(self, rpc: str, method, request, timeout):
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise FlashCoreError.from_rpc_error(rpc, error, self.address) from None

    @staticmethod
    def _kernel_request(request, fields) -> pb.KernelRequest:
        if request is not None and fields:
            raise TypeError("pass a KernelRequest or keyword fields, not both")
        return request if request is not None else messages.kernel_request(**fields)

    # -- RPCs ---------------------------------------------------------------

    def compile(self, request: Optional[pb.KernelRequest] = None, *, timeout=_UNSET,
                **fields) -> pb.KernelHandle:
        """Compile (or fetch from a cache tier) one kernel: Compile. ``handle.tier`` says which."""
        return self._call("Compile", self._stub.Compile, self._kernel_request(request, fields),
                          timeout)

    def get_kernel(self, key: str, *, omit_cubin: bool = False,
                   problem: Optional[pb.Problem] = None, timeout=_UNSET) -> pb.KernelHandle:
        """A cached kernel by its 64-hex key (NOT_FOUND when no tier has it): GetKernel.

        With ``problem`` the launch geometry is computed for that shape."""
        request = pb.GetKernelRequest(key=key, omit_cubin=omit_cubin, problem=problem)
        return self._call("GetKernel", self._stub.GetKernel, request, timeout)

    def list_kernels(self, page_size: int = 0, page_token: str = "", *,
                     timeout=_UNSET) -> pb.ListKernelsResponse:
        """One page of cached kernels in key order: ListKernels."""
        request = pb.ListKernelsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListKernels", self._stub.ListKernels, request, timeout)

    def iter_kernels(self, page_size: int = 0, *, timeout=_UNSET) -> Iterator[pb.KernelSummary]:
        """Every cached kernel, page after page (the CLI's ``list --all``)."""
        token = ""
        while True:
            page = self.list_kernels(page_size, token, timeout=timeout)
            yield from page.kernels
            token = page.next_page_token
            if not token:
                return

    def server_info(self, *, timeout=_UNSET) -> pb.ServerInfo:
        """Version, NVRTC, default arch, GPU (or why none), archs, templates: GetServerInfo."""
        return self._call("GetServerInfo", self._stub.GetServerInfo, pb.GetServerInfoRequest(),
                          timeout)

    def validate(self, request: Optional[pb.KernelRequest] = None, *,
                 options: Optional[pb.ValidationOptions] = None, timeout=_UNSET,
                 **fields) -> pb.KernelHandle:
        """Compile or fetch, then run the validation matrix on a daemon GPU: Validate.

        The record is ``handle.validation``; FAILED_PRECONDITION without GPU workers."""
        message = pb.ValidateRequest(kernel=self._kernel_request(request, fields), options=options)
        return self._call("Validate", self._stub.Validate, message, timeout)

    def tune(self, request: Union[pb.TuneRequest, pb.KernelRequest, None] = None, *,
             searcher: str = "", max_evaluations: int = 0, time_budget_ms: int = 0,
             patience: int = 0, force: bool = False, seed: int = 0, timeout=_UNSET,
             **fields) -> TuneStream:
        """Start a tuning job: Tune. Returns a :class:`TuneStream` of progress events.

        ``request`` is a TuneRequest (used as it is), or a KernelRequest / keyword
        fields for the kernel, with the search settings as keywords (0 = the
        daemon's defaults). The stream's deadline is ``timeout`` like any call."""
        if isinstance(request, pb.TuneRequest):
            if fields:
                raise TypeError("pass a TuneRequest or keyword fields, not both")
            message = request
        else:
            message = pb.TuneRequest(kernel=self._kernel_request(request, fields),
                                     searcher=searcher, max_evaluations=max_evaluations,
                                     time_budget_ms=time_budget_ms, patience=patience,
                                     force=force, seed=seed)
        call = self._stub.Tune(message, timeout=self._deadline(timeout), metadata=self._metadata)
        return TuneStream(call, self.address)

    def get_tuning_result(self, request: Optional[pb.KernelRequest] = None, *, device: str = "",
                          timeout=_UNSET, **fields) -> pb.TuningResult:
        """The stored best for the request's class, shape bucket and arch on ``device``
        (empty: the daemon's GPU): GetTuningResult. NOT_FOUND when none is stored."""
        message = pb.GetTuningResultRequest(kernel=self._kernel_request(request, fields),
                                            device=device)
        return self._call("GetTuningResult", self._stub.GetTuningResult, message, timeout)

    def list_tuning_results(self, page_size: int = 0, page_token: str = "", *,
                            timeout=_UNSET) -> pb.ListTuningResultsResponse:
        """One page of stored tuning results: ListTuningResults."""
        request = pb.ListTuningResultsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListTuningResults", self._stub.ListTuningResults, request, timeout)

    def iter_tuning_results(self, page_size: int = 0, *,
                            timeout=_UNSET) -> Iterator[pb.TuningResult]:
        """Every stored tuning result, page after page (the CLI's ``results --all``)."""
        return self._every(self.list_tuning_results, "results", page_size, timeout)

    def list_tune_jobs(self, *, timeout=_UNSET) -> pb.ListTuneJobsResponse:
        """Tune jobs queued or running now: this client's own (an admin's: all): ListTuneJobs."""
        return self._call("ListTuneJobs", self._stub.ListTuneJobs, pb.ListTuneJobsRequest(),
                          timeout)

    def cancel_tune_job(self, job_id: int, *, timeout=_UNSET) -> pb.TuneJob:
        """Cancels a queued or running tune job by its ``TuneJob.id``: CancelTuneJob.

        Its Tune stream ends CANCELLED; NOT_FOUND for a job this client may not see."""
        response = self._call("CancelTuneJob", self._stub.CancelTuneJob,
                              pb.CancelTuneJobRequest(id=job_id), timeout)
        return response.job

    def list_tuning_jobs(self, page_size: int = 0, page_token: str = "", *,
                         timeout=_UNSET) -> pb.ListTuningJobsResponse:
        """One page of the tuning database's recorded jobs, in id order: ListTuningJobs."""
        request = pb.ListTuningJobsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListTuningJobs", self._stub.ListTuningJobs, request, timeout)

    def iter_tuning_jobs(self, page_size: int = 0, *,
                         timeout=_UNSET) -> Iterator[pb.TuningJobRecord]:
        """Every recorded tuning job (any status), page after page."""
        return self._every(self.list_tuning_jobs, "jobs", page_size, timeout)

    @staticmethod
    def _every(list_page, field: str, page_size: int, timeout) -> Iterator:
        """The items of a paged listing (``list_page(page_size, token, timeout=)``,
        its repeated ``field``), page after page until no next_page_token."""
        token = ""
        while True:
            page = list_page(page_size, token, timeout=timeout)
            yield from getattr(page, field)
            token = page.next_page_token
            if not token:
                return

    def get_tuning_job(self, job_id: int, *, timeout=_UNSET) -> pb.TuningJobTrials:
        """A recorded job and every trial it measured, in order: GetTuningJob.

        NOT_FOUND for an unknown id; ``TuneStarted.job_id`` names a job."""
        return self._call("GetTuningJob", self._stub.GetTuningJob,
                          pb.GetTuningJobRequest(job_id=job_id), timeout)

    def tune_many(self, shapes, *, template_id: str = "attention_fwd", arch: str = "",
                  searcher: str = "", max_evaluations: int = 0, time_budget_ms: int = 0,
                  patience: int = 0, force: bool = False, seed: int = 0,
                  timeout: Optional[float] = None, progress: bool = True, stream=None,
                  on_outcome=None):
        """Tune every shape, one Tune call after another: a :class:`flashcore.TunePlanReport`.

        ``shapes``: :class:`flashcore.Shape` objects or plan-file mappings (what
        ``flashcore.torch.record_shapes()`` yields, or :func:`flashcore.load_plan`
        returns). A shape that fails is kept in the report with its error (``.code``,
        e.g. FAILED_PRECONDITION from a daemon without GPU workers) and the next one
        is tuned. ``progress`` draws a tqdm bar on ``stream`` (stderr; plain lines
        without tqdm); ``report.table()`` is the summary, speedup per shape against
        the family default. Each Tune call has ``timeout`` (None: no deadline); the
        search settings are Tune's."""
        from .tune_plan import tune_many
        return tune_many(self, shapes, template_id=template_id, arch=arch, searcher=searcher,
                         max_evaluations=max_evaluations, time_budget_ms=time_budget_ms,
                         patience=patience, force=force, seed=seed, timeout=timeout,
                         progress=progress, stream=stream, on_outcome=on_outcome)

    def health(self, service: str = "", *, timeout=_UNSET) -> str:
        """grpc.health.v1.Health/Check: "SERVING", "NOT_SERVING", ... ("" = the whole server)."""
        response = self._call("Health.Check", self._health, HealthCheckRequest(service=service),
                              timeout)
        return serving_status_name(response)
