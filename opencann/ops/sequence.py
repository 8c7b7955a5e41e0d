"""Sequences and optionals (seed layer 2, NN library).

A sequence is a Python list of arrays (kernels never mutate the list they receive); an empty optional is
``None`` and a present one is its element itself.
"""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _position(position, length: int, *, inclusive: bool, what: str) -> int:
    """A sequence index in ``[-length, length)`` (``inclusive``: up to ``length``), made non-negative."""
    pos = int(np.asarray(position).reshape(-1)[0])
    upper = length + 1 if inclusive else length
    if not -length <= pos < upper:
        raise AclError(ErrorCode.INVALID_PARAM, f"{what}: position {pos} is out of range for a sequence "
                                                f"of length {length}")
    return pos + length if pos < 0 else pos


# --------------------------------------------------------------------------------------- sequences


@op("SequenceEmpty", since=11)
def sequence_empty(*, dtype=None):
    return []


@op("SequenceConstruct", since=11)
def sequence_construct(*inputs):
    return list(inputs)


@op("SequenceInsert", since=11)
def sequence_insert(sequence, tensor, position=None):
    out = list(sequence)
    if position is None:
        out.append(tensor)
    else:
        out.insert(_position(position, len(out), inclusive=True, what="SequenceInsert"), tensor)
    return out


@op("SequenceAt", since=11)
def sequence_at(sequence, position):
    return sequence[_position(position, len(sequence), inclusive=False, what="SequenceAt")]


@op("SequenceErase", since=11)
def sequence_erase(sequence, position=None):
    out = list(sequence)
    del out[-1 if position is None else _position(position, len(out), inclusive=False, what="SequenceErase")]
    return out


@op("SequenceLength", since=11)
def sequence_length(sequence):
    return np.array(len(sequence), dtype=np.int64)


@op("SplitToSequence", since=11)
def split_to_sequence(x, split=None, *, axis=0, keepdims=1):
    """Split along ``axis`` into size-1 parts (squeezed unless ``keepdims``), chunks of ``split``, or
    parts of the listed lengths."""
    if not -x.ndim <= axis < x.ndim:
        raise AclError(ErrorCode.INVALID_PARAM, f"SplitToSequence: axis {axis} out of range for rank {x.ndim}")
    axis %= x.ndim
    size = x.shape[axis]
    if split is None:
        parts = np.split(x, size, axis=axis) if size else []
        return parts if keepdims else [np.squeeze(p, axis=axis) for p in parts]
    split = np.asarray(split).astype(np.int64)
    if split.ndim == 0:
        if split <= 0:
            raise AclError(ErrorCode.INVALID_PARAM, f"SplitToSequence: split {int(split)} must be positive")
        return np.split(x, np.arange(int(split), size, int(split)), axis=axis)
    if (split < 0).any() or split.sum() != size:
        raise AclError(ErrorCode.INVALID_PARAM, f"SplitToSequence: split {split.tolist()} does not sum "
                                                f"to dimension {size} of axis {axis}")
    return np.split(x, np.cumsum(split)[:-1], axis=axis)


@op("ConcatFromSequence", since=11)
def concat_from_sequence(sequence, *, axis, new_axis=0):
    if not sequence:
        raise AclError(ErrorCode.INVALID_PARAM, "ConcatFromSequence: the input sequence is empty")
    return np.stack(sequence, axis=axis) if new_axis else np.concatenate(sequence, axis=axis)


@op("SequenceMap", since=17)
def sequence_map(input_sequence, *additional_inputs, body):
    """Apply ``body`` to the i-th element of every sequence input (tensor inputs passed whole)."""
    inputs = (input_sequence, *additional_inputs)
    for x in inputs:
        if isinstance(x, list) and len(x) != len(input_sequence):
            raise AclError(ErrorCode.INVALID_PARAM, "SequenceMap: input sequences differ in length")
    results = [body(*(x[i] if isinstance(x, list) else x for x in inputs)) for i in range(len(input_sequence))]
    return tuple([r[j] for r in results] for j in range(len(body.output_names)))


# --------------------------------------------------------------------------------------- optionals


@op("Optional", since=15)
def optional(x=None, *, type=None):
    return x


@op("OptionalGetElement", since=15)
def optional_get_element(x):
    if x is None:
        raise AclError(ErrorCode.INVALID_PARAM, "OptionalGetElement: the optional is empty")
    return x


@op("OptionalHasElement", since=15)
def optional_has_element(x=None):
    return np.array(x is not None)
