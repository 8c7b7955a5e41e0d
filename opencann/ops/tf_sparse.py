"""TensorFlow's segment reductions (domain ``opencann``): the sums that turn an embedding's sparse
gradient (IndexedSlices) into per-row updates. Semantics are TensorFlow's: rows are summed in index
order, negative segment ids are dropped, ids past ``num_segments`` are an error."""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op

DOMAIN = "opencann"


@op("UnsortedSegmentSum", domain=DOMAIN)
def unsorted_segment_sum(data, segment_ids, num_segments):
    n = int(np.asarray(num_segments).reshape(-1)[0])
    ids = segment_ids.astype(np.int64, copy=False)
    if ids.size and ids.max() >= n:
        raise AclError(ErrorCode.INVALID_PARAM, f"UnsortedSegmentSum: segment id {int(ids.max())} is out of "
                       f"range for {n} segments")
    rows = data.reshape(ids.size, *data.shape[ids.ndim:])
    keep = ids.reshape(-1) >= 0
    out = np.zeros((n, *rows.shape[1:]), dtype=data.dtype)
    np.add.at(out, ids.reshape(-1)[keep], rows[keep])
    return out
