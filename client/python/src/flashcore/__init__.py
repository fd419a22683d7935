"""FlashCore's Python client.

    import flashcore
    client = flashcore.Client()          # $FLASHCORE_ADDRESS, else 127.0.0.1:50051
    handle = client.compile(dtype="fp16", head_dim=64, heads=8, seq_q=512)
    print(handle.key, handle.lowered_name, handle.launch.dynamic_smem_bytes)

Results are the generated messages of flashcore.v1 (``flashcore.pb``); every
failure is a :class:`FlashCoreError`. Whole-model tuning: shapes recorded by
``flashcore.torch.record_shapes()`` or read by :func:`load_plan` go to
:meth:`Client.tune_many` (``flashcore-tune-plan FILE`` from a shell). ``flashcore.torch`` (needs PyTorch)
holds the attention op that launches the served kernels.
"""

from ._stubs import epb, pb
from .client import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_S, Client, TuneStream
from .errors import FlashCoreError
from .evolve import EvaluationStream, source_candidate
from .messages import kernel_request, problem, tile_config
from .plan import PlanError, Shape, load_plan, parse_plan, save_plan
from .tune_plan import ShapeOutcome, TunePlanReport

__version__ = "0.1.0"

__all__ = [
    "Client", "FlashCoreError", "TuneStream", "DEFAULT_ADDRESS", "DEFAULT_TIMEOUT_S",
    "kernel_request", "pb", "problem", "tile_config", "__version__",
    "epb", "EvaluationStream", "source_candidate",
    "Shape", "PlanError", "load_plan", "parse_plan", "save_plan", "ShapeOutcome",
    "TunePlanReport",
]
