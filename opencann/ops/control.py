"""Control flow: If, Loop and Scan (seed layer 2, NN library).

Bodies arrive as :class:`~opencann.runtime.executor.Subgraph` callables ``body(*inputs) -> list``; the
kernels here only sequence the calls and assemble loop-carried values and scan outputs.
"""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _flag(value, what: str) -> bool:
    """A boolean scalar (or one-element tensor) as a Python bool."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise AclError(ErrorCode.INVALID_PARAM, f"{what} must hold one element, got shape {arr.shape}")
    return bool(arr.reshape(-1)[0])


def _empty_like_output(body, index: int, lead: tuple[int, ...]) -> np.ndarray:
    """An empty scan output (no iteration ran), shaped and typed from the body's declared output."""
    t = body.plan.graph.outputs[index].type
    dtype = getattr(t, "dtype", np.dtype(np.float32))
    dims = getattr(t, "shape", None) or ()
    return np.zeros(lead + tuple(d if isinstance(d, int) else 0 for d in dims), dtype=dtype)


# ---------------------------------------------------------------------------------------------- If


@op("If", since=1)
def if_(cond, *, then_branch, else_branch):
    branch = then_branch if _flag(cond, "If condition") else else_branch
    return tuple(branch())


# -------------------------------------------------------------------------------------------- Loop


@op("Loop", since=1)
def loop(m, cond, *v_initial, body):
    """Run ``body(i, cond, *carried)`` while ``i < M`` and ``cond``; stack each scan output on axis 0."""
    n = len(v_initial)
    trip = None if m is None else int(np.asarray(m).reshape(-1)[0])
    keep = True if cond is None else _flag(cond, "Loop condition")
    k = len(body.output_names) - 1 - n
    if len(getattr(body, "input_names", ())) != 2 + n:
        raise AclError(ErrorCode.OP_INPUT_NOT_MATCH, f"Loop: the body takes {len(body.input_names)} inputs, not the "
                       f"iteration, the condition and {n} carried values")
    run = body.runner()
    state, scans, i = tuple(v_initial), [], 0
    true = np.array(True)
    true.flags.writeable = False  # one array for every iteration's (always true) condition input
    while keep and (trip is None or i < trip):
        outs = run((np.array(i, dtype=np.int64), true, *state))
        if cond is not None:
            c = outs[0]
            keep = bool(c) if type(c) is np.ndarray and c.shape == () else _flag(c, "Loop body condition")
        state = outs[1:1 + n]
        if k:
            scans.append(outs[1 + n:])
        i += 1
    stacked = [np.stack([s[j] for s in scans]) if scans else _empty_like_output(body, 1 + n + j, (0,))
               for j in range(k)]
    return (*state, *stacked)


# -------------------------------------------------------------------------------------------- Scan


def _scan_steps(body, states: list, xs: list[np.ndarray], reverse: list[bool], steps: int):
    """Iterate ``body`` over the first axis of ``xs``; returns final states and per-output element lists."""
    collected: list[list[np.ndarray]] = []
    for t in range(steps):
        elems = [x[steps - 1 - t] if rev else x[t] for x, rev in zip(xs, reverse, strict=True)]
        outs = body(*states, *elems)
        states = list(outs[:len(states)])
        if not collected:
            collected = [[] for _ in outs[len(states):]]
        for acc, o in zip(collected, outs[len(states):], strict=True):
            acc.append(np.asarray(o))
    return states, collected


def _axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise AclError(ErrorCode.INVALID_PARAM, f"Scan: {what} {axis} is out of range for rank {rank}")
    return axis % rank


@op("Scan", since=8)
def scan8(sequence_lens, *inputs, body, num_scan_inputs, directions=None):
    """Scan-8: batch axis 0, scan axis 1, optional per-batch lengths (outputs zero-padded)."""
    n = len(inputs) - num_scan_inputs
    inits, xs = inputs[:n], inputs[n:]
    reverse = [bool(d) for d in (directions or [0] * num_scan_inputs)]
    batch, max_len = xs[0].shape[0], xs[0].shape[1]
    lens = [max_len] * batch if sequence_lens is None else [int(v) for v in np.asarray(sequence_lens)]
    k = len(body.output_names) - n
    final: list[list] = [[] for _ in range(n)]
    scanned: list[list] = [[] for _ in range(k)]
    for b in range(batch):
        states, outs = _scan_steps(body, [s[b] for s in inits], [x[b] for x in xs], reverse, lens[b])
        for acc, s in zip(final, states, strict=True):
            acc.append(s)
        for j in range(k):
            elems = outs[j] if outs else []
            proto = elems[0] if elems else _empty_like_output(body, n + j, ())
            padded = np.zeros((max_len, *proto.shape), dtype=proto.dtype)
            if elems:
                padded[:len(elems)] = np.stack(elems)
            scanned[j].append(padded)
    return (*(np.stack(f) for f in final), *(np.stack(s) for s in scanned))


@op("Scan", since=9)
def scan(*inputs, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    n = len(inputs) - num_scan_inputs
    xs = list(inputs[n:])
    in_axes = scan_input_axes or [0] * num_scan_inputs
    xs = [np.moveaxis(x, _axis(a, x.ndim, "scan_input_axes"), 0) for x, a in zip(xs, in_axes, strict=True)]
    reverse = [bool(d) for d in (scan_input_directions or [0] * num_scan_inputs)]
    steps = xs[0].shape[0] if xs else 0
    if any(x.shape[0] != steps for x in xs):
        raise AclError(ErrorCode.INVALID_PARAM, "Scan: scan inputs differ in sequence length")
    states, outs = _scan_steps(body, list(inputs[:n]), xs, reverse, steps)
    k = len(body.output_names) - n
    out_axes = scan_output_axes or [0] * k
    out_rev = scan_output_directions or [0] * k
    results = []
    for j in range(k):
        elems = outs[j] if outs else []
        stacked = np.stack(elems[::-1] if out_rev[j] else elems) if elems else _empty_like_output(body, n + j, (0,))
        results.append(np.moveaxis(stacked, 0, _axis(out_axes[j], stacked.ndim, "scan_output_axes")))
    return (*states, *results)
