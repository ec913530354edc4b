"""A probe for e2e tests, copied into a job's app/custom/: the server's aggregator, recording what it accepts.

One JSON line per accepted update in ``record_file``: the value types, whether any value could be decrypted with
the context it carries (a TenSEAL context holding a secret key), the keys, the bytes of serialized values, and the
fraction of zero values.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator


def _describe(data: dict[str, Any]) -> dict[str, Any]:
    kinds = sorted({type(v).__name__ for v in data.values()})
    decryptable = any(hasattr(v, "context") and v.context().is_private() for v in data.values())
    plain = [np.asarray(v) for v in data.values() if isinstance(v, np.ndarray)]
    total = sum(a.size for a in plain)
    zeros = sum(int((a == 0).sum()) for a in plain)
    zero_fraction = zeros / total if total else None
    return {
        "kinds": kinds,
        "decryptable": decryptable,
        "keys": sorted(data),
        "values": total,
        "serialized_bytes": sum(len(v) for v in data.values() if isinstance(v, bytes)),
        "zero_fraction": zero_fraction,
    }


class _Recording:
    record_file: str

    def accept(self, shareable: Any, fl_ctx: Any) -> bool:
        with open(self.record_file, "a") as f:
            f.write(json.dumps(_describe(from_shareable(shareable).data)) + "\n")
        return super().accept(shareable, fl_ctx)  # type: ignore[misc]


class RecordingAggregator(_Recording, InTimeAccumulateWeightedAggregator):
    def __init__(self, record_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_file = record_file


try:
    from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator

    class RecordingHEAggregator(_Recording, HEInTimeAccumulateWeightedAggregator):
        def __init__(self, record_file: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.record_file = record_file

    from clara_fl.fl.server.he import HEInTimeAccumulateWeightedAggregator as PackedHEAggregator

    class RecordingPackedHEAggregator(_Recording, PackedHEAggregator):
        def __init__(self, record_file: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.record_file = record_file

except ImportError:  # no TenSEAL: only plain jobs are probed
    pass
