"""The client side of flashcore.v1.KernelEvolution: EvaluateSource and the lineage.

Mixed into :class:`flashcore.Client`::

    import flashcore
    client = flashcore.Client()
    stream = client.evaluate_source(
        problem=flashcore.problem(dtype="fp16", head_dim=64, heads=8, seq_q=1024),
        candidates=[flashcore.source_candidate("mine", source, config={"block_m": 128, ...})],
        generation=1)
    for event in stream:                 # started, one verdict per stage, summary
        ...
    print(stream.summary.valid, [v.status for v in stream.verdicts.values()])

Messages are the generated ones of evolve.proto (``flashcore.epb``).
"""

import threading
from typing import Dict, Iterable, Iterator, Optional

import grpc

from . import messages
from ._stubs import epb, epb_grpc, pb
from .errors import FlashCoreError


def source_candidate(name: str, source: str, *, name_expression: str = "",
                     launch: Optional[dict] = None, config=None, parent_ids: Iterable[int] = (),
                     tags: Iterable[str] = ()) -> "epb.SourceCandidate":
    """A SourceCandidate: either a kernel named by ``name_expression`` with ``launch``
    ({"block_m", "threads", "dynamic_smem_bytes"}), or a variant of the family's
    template at ``config`` (a TileConfig or a dict of its fields)."""
    candidate = epb.SourceCandidate(name=name, source=source, name_expression=name_expression,
                                    parent_ids=list(parent_ids), tags=list(tags))
    if launch:
        candidate.launch.CopyFrom(epb.SourceLaunch(**launch))
    if config is not None:
        candidate.config.CopyFrom(config if isinstance(config, pb.TileConfig)
                                  else messages.tile_config(**config))
    return candidate


class EvaluationStream:
    """One EvaluateSource call: iterate it for EvaluateSourceEvent messages.

    While iterating, :attr:`started` (the candidate ids), :attr:`verdicts`
    (the latest verdict per candidate id) and, at the end, :attr:`summary`
    are filled in. :meth:`wait` drains it. :meth:`cancel` stops the call.
    """

    def __init__(self, call, address: str):
        self._call = call
        self._address = address
        self._cancelled = threading.Event()
        self.started: Optional[epb.GenerationStarted] = None
        self.verdicts: Dict[int, epb.CandidateVerdict] = {}
        self.summary: Optional[epb.GenerationSummary] = None

    def __iter__(self) -> Iterator["epb.EvaluateSourceEvent"]:
        try:
            for event in self._call:
                kind = event.WhichOneof("event")
                if kind == "started":
                    self.started = event.started
                elif kind == "verdict":
                    self.verdicts[event.verdict.candidate_id] = event.verdict
                elif kind == "summary":
                    self.summary = event.summary
                yield event
        except grpc.RpcError as error:
            if self._cancelled.is_set() and error.code() == grpc.StatusCode.CANCELLED:
                return
            raise FlashCoreError.from_rpc_error("EvaluateSource", error, self._address) from None

    def wait(self) -> Optional["epb.GenerationSummary"]:
        for _ in self:
            pass
        return self.summary

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


class EvolutionMethods:
    """KernelEvolution's RPCs; expects the Client's channel, metadata and _call."""

    def _evolution(self):
        stub = getattr(self, "_evolution_stub", None)
        if stub is None:
            stub = self._evolution_stub = epb_grpc.KernelEvolutionStub(self._channel)
        return stub

    def evaluate_source(self, request: Optional["epb.EvaluateSourceRequest"] = None, *,
                        problem=None, candidates=(), shapes=(), generation: int = 0,
                        arch: str = "", template_id: str = "", options=None, tags=(),
                        timeout=None) -> EvaluationStream:
        """Submits one generation; returns its stream (see EvaluationStream).

        ``options`` is an EvaluateSourceOptions or a dict of its fields
        (``depth`` "compile" / "quick" / "full" or the enum, ``sanitizer``,
        ``gpu_time_budget_ms``, ``baseline``, ``rel_tolerance``).
        ``timeout`` (seconds, default none) bounds the whole generation."""
        if request is None:
            request = epb.EvaluateSourceRequest(generation=generation, arch=arch,
                                                template_id=template_id, tags=list(tags))
            if problem is not None:
                request.problem.CopyFrom(problem if isinstance(problem, pb.Problem)
                                         else messages.problem(**problem))
            for shape in shapes:
                request.shapes.add().CopyFrom(shape if isinstance(shape, pb.Problem)
                                              else messages.problem(**shape))
            for candidate in candidates:
                request.candidates.add().CopyFrom(candidate)
            if options is not None:
                if isinstance(options, dict):
                    fields = dict(options)
                    depth = fields.pop("depth", None)
                    message = epb.EvaluateSourceOptions(**fields)
                    if isinstance(depth, str):
                        message.depth = epb.ValidationDepth.Value(
                            "VALIDATION_DEPTH_" + depth.upper())
                    elif depth is not None:
                        message.depth = depth
                    options = message
                request.options.CopyFrom(options)
        call = self._evolution().EvaluateSource(request, timeout=timeout, metadata=self._metadata)
        return EvaluationStream(call, self.address)

    def list_candidates(self, *, generation: Optional[int] = None, tag: str = "",
                        owner: str = "", page_size: int = 0, page_token: str = "",
                        include_source: bool = False,
                        timeout=None) -> "epb.ListCandidatesResponse":
        request = epb.ListCandidatesRequest(tag=tag, owner=owner, page_size=page_size,
                                            page_token=page_token, include_source=include_source)
        if generation is not None:
            request.generation = generation
        return self._call("ListCandidates", self._evolution().ListCandidates, request,
                          self.timeout if timeout is None else timeout)

    def iter_candidates(self, **fields) -> Iterator["epb.StoredCandidate"]:
        token = ""
        while True:
            page = self.list_candidates(page_token=token, **fields)
            yield from page.candidates
            token = page.next_page_token
            if not token:
                return

    def get_candidate(self, candidate_id: int, *, timeout=None) -> "epb.StoredCandidate":
        return self._call("GetCandidate", self._evolution().GetCandidate,
                          epb.GetCandidateRequest(id=candidate_id),
                          self.timeout if timeout is None else timeout)

    def promote_candidate(self, candidate_id: int, *, shape=None,
                          timeout=None) -> "epb.PromoteCandidateResponse":
        request = epb.PromoteCandidateRequest(id=candidate_id)
        if shape is not None:
            request.shape.CopyFrom(shape if isinstance(shape, pb.Problem)
                                   else messages.problem(**shape))
        return self._call("PromoteCandidate", self._evolution().PromoteCandidate, request,
                          self.timeout if timeout is None else timeout)
