"""Attention shapes to tune, and plan files that list them (no PyTorch needed).

A :class:`Shape` is one attention call's problem: the compile-time class
(dtype, head_dim, causal) and the run-time shape (batch, heads, kv_heads,
seq_q, seq_k, layout). ``flashcore.torch.record_shapes()`` records them from a
model's forward pass; :meth:`flashcore.Client.tune_many` and ``flashcore
tune-plan FILE`` tune each one.

A plan file is JSON or YAML (by its suffix: .json, .yaml/.yml; else JSON
first), a list of shapes, or a mapping with the list under ``shapes``::

    [{"dtype": "fp16", "head_dim": 128, "batch": 4, "heads": 32, "kv_heads": 8,
      "seq_q": 2048, "causal": true}]

Required: head_dim, seq_q. Optional: dtype ("fp16"), causal (false), batch (1),
heads (1), kv_heads (= heads), seq_k (= seq_q), layout ("bhsd", PyTorch's), and
calls (how often the model made it; informational). Unknown fields are
refused, and every error names the entry and the field.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, List, Union

from . import messages
from ._stubs import pb

DTYPES = ("fp16", "bf16")
LAYOUTS = ("bhsd", "bshd")


class PlanError(ValueError):
    """A plan file or shape entry that does not parse; the message names the field."""


@dataclass(frozen=True)
class Shape:
    """One attention problem: what a tuning job is asked for."""
    head_dim: int
    seq_q: int
    dtype: str = "fp16"
    causal: bool = False
    batch: int = 1
    heads: int = 1
    kv_heads: int = 0      # 0: heads
    seq_k: int = 0         # 0: seq_q
    layout: str = "bhsd"

    def __post_init__(self):
        # Normalize the "same as" zeros, so equal problems compare equal.
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.seq_k == 0:
            object.__setattr__(self, "seq_k", self.seq_q)

    def label(self) -> str:
        """"fp16 D128 causal 4x32/8 S2048" (kv heads and seq_k shown when they differ)."""
        heads = "%d" % self.heads if self.kv_heads == self.heads else "%d/%d" % (
            self.heads, self.kv_heads)
        seq = "S%d" % self.seq_q if self.seq_k == self.seq_q else "S%dx%d" % (
            self.seq_q, self.seq_k)
        return "%s D%d%s %dx%s %s%s" % (self.dtype, self.head_dim,
                                         " causal" if self.causal else "", self.batch, heads,
                                         seq, "" if self.layout == "bhsd" else " bshd")

    def to_dict(self) -> dict:
        return asdict(self)

    def problem_fields(self) -> dict:
        return dict(dtype=self.dtype, head_dim=self.head_dim, causal=self.causal,
                    batch=self.batch, heads=self.heads, kv_heads=self.kv_heads, seq_q=self.seq_q,
                    seq_k=self.seq_k, layout=self.layout)

    def kernel_request(self, template_id: str = messages.DEFAULT_TEMPLATE,
                       arch: str = "") -> pb.KernelRequest:
        return messages.kernel_request(template_id=template_id, arch=arch,
                                       **self.problem_fields())

    @classmethod
    def from_dict(cls, entry, where: str = "shape") -> "Shape":
        """A Shape from a plan entry; PlanError naming ``where`` and the field otherwise."""
        if isinstance(entry, Shape):
            return entry
        if not isinstance(entry, dict):
            raise PlanError("%s: expected a mapping of shape fields, got %s"
                            % (where, type(entry).__name__))
        known = {f.name for f in fields(cls)} | {"calls"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise PlanError("%s.%s: unknown field (known: %s)"
                            % (where, unknown[0], ", ".join(sorted(known))))
        values = {}
        for name in ("head_dim", "seq_q"):
            if name not in entry:
                raise PlanError("%s.%s: missing (required: head_dim, seq_q)" % (where, name))
        for name in ("head_dim", "seq_q", "batch", "heads", "kv_heads", "seq_k", "calls"):
            if name in entry:
                value = entry[name]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise PlanError("%s.%s: expected an integer, got %r" % (where, name, value))
                minimum = 0 if name in ("kv_heads", "seq_k") else 1
                if value < minimum:
                    raise PlanError("%s.%s: must be >= %d, got %d" % (where, name, minimum, value))
                if name != "calls":
                    values[name] = value
        if "causal" in entry:
            if not isinstance(entry["causal"], bool):
                raise PlanError("%s.causal: expected true or false, got %r"
                                % (where, entry["causal"]))
            values["causal"] = entry["causal"]
        for name, allowed in (("dtype", DTYPES), ("layout", LAYOUTS)):
            if name in entry:
                value = str(entry[name]).lower()
                if value not in allowed:
                    raise PlanError("%s.%s: %r is not one of %s"
                                    % (where, name, entry[name], ", ".join(allowed)))
                values[name] = value
        heads, kv_heads = values.get("heads", 1), values.get("kv_heads", 0)
        if kv_heads and heads % kv_heads:
            raise PlanError("%s.kv_heads: %d must divide heads %d" % (where, kv_heads, heads))
        return cls(**values)


ShapeLike = Union[Shape, dict]


def parse_plan(data, source: str = "plan") -> List[Shape]:
    """Shapes from a decoded plan (a list, or a mapping with ``shapes``)."""
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"shapes"})
        if unknown:
            raise PlanError("%s: unknown top-level field %r (a plan is a list of shapes, or "
                            "{\"shapes\": [...]})" % (source, unknown[0]))
        if "shapes" not in data:
            raise PlanError("%s.shapes: missing" % source)
        data, source = data["shapes"], source + ".shapes"
    if not isinstance(data, list):
        raise PlanError("%s: expected a list of shapes, got %s" % (source, type(data).__name__))
    if not data:
        raise PlanError("%s: the list of shapes is empty" % source)
    return [Shape.from_dict(entry, "%s[%d]" % (source, i)) for i, entry in enumerate(data)]


def _load_yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:
        raise PlanError("%s: reading YAML needs PyYAML (pip install 'flashcore[plan]')"
                        % path) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PlanError("%s: not valid YAML: %s" % (path, error)) from None


def load_plan(path) -> List[Shape]:
    """The shapes of a JSON or YAML plan file; PlanError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PlanError("%s: cannot read: %s" % (path, error.strerror or error)) from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = _load_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if suffix == ".json":
                raise PlanError("%s: not valid JSON: %s" % (path, error)) from None
            data = _load_yaml(text, path)
    return parse_plan(data, path.name)


def save_plan(shapes: Iterable[ShapeLike], path) -> Path:
    """Writes shapes as a JSON plan file (what `flashcore tune-plan` reads)."""
    path = Path(path)
    entries = []
    for shape in shapes:
        entry = Shape.from_dict(shape).to_dict() if not isinstance(shape, Shape) else shape.to_dict()
        calls = getattr(shapes, "calls", {}).get(shape) if hasattr(shapes, "calls") else None
        if calls:
            entry["calls"] = calls
        entries.append(entry)
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path
