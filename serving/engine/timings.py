"""What the data plane measured of one answered request, in nanoseconds: the record the
ledger (`serving.engine.ledger`) writes into both the Triton statistics and the Prometheus
metrics."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Timings"]


@dataclass(slots=True)
class Timings:
    """Triton's split of a request's time. `compute_ns` is the framework call it ran in, of
    `batch_rows` rows: its own call when `own_execution`, else a dynamic batch's (which the
    ledger counted when the batch ran)."""

    rows: int
    queue_ns: int
    input_ns: int
    compute_ns: int
    output_ns: int
    batch_rows: int
    own_execution: bool
    # From the request's arrival in the data plane to its answer; set last.
    total_ns: int = 0
