"""The exact-marginal backends a recipe selects with `inside: ours|torch-struct`.

The only module that knows both implementations: ours (`inside`, `viterbi`) and the
reference computed by torch-struct's `SentCFG` (`inside_torch_struct`, needs the optional
torch-struct package when called).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from grammars.charts import inside
from grammars.charts import inside_torch_struct as ts
from grammars.charts.viterbi import viterbi

BACKENDS = ("ours", "torch-struct")


class InsideBackend(NamedTuple):
    """The exact-marginal operations a recipe selects with `inside: ours|torch-struct`."""
    log_partition: Callable
    span_marginals: Callable
    viterbi: Callable


def get_backend(name: str) -> InsideBackend:
    """`ours` (this module) or `torch-struct` (reference; needs the torch-struct package)."""
    if name == "ours":
        return InsideBackend(inside.log_partition, inside.span_marginals, viterbi)
    if name == "torch-struct":
        return InsideBackend(ts.log_partition, ts.span_marginals, ts.viterbi)
    raise ValueError(f"unknown inside backend {name!r}: expected 'ours' or 'torch-struct'")
