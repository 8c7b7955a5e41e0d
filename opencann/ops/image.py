"""Image and detection operators (seed layer 2, NN library): Resize, Upsample, GridSample, AffineGrid,
RoiAlign, NonMaxSuppression and ImageDecoder.

Resize is separable: each resized axis maps its output positions to source coordinates, picks a few
taps per position and takes a weighted sum of gathered slices (float64, like ONNX's reference).
GridSample gathers every interpolation tap for all grid points at once. RoiAlign's average mode is
separable too: per RoI it is ``Wy @ X @ Wx.T`` with the bilinear sample weights summed into matrices.
"""
from __future__ import annotations

import io
import itertools
import math

import numpy as np
import PIL.Image

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.registry import op

# --------------------------------------------------------------------------------------------- Resize


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient ``a``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi):
    """Source coordinate of each output position along one axis, and a mask of extrapolated ones."""
    y = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if ctm == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_w)
        return offset + (y + 0.5) / scale - 0.5, None
    if ctm == "pytorch_half_pixel":
        return (np.full(out_len, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5), None
    if ctm == "align_corners":
        return (np.zeros(out_len) if out_w == 1 else y * (in_len - 1) / (out_w - 1)), None
    if ctm == "asymmetric":
        return y / scale, None
    if ctm == "tf_crop_and_resize":
        start, end = (0.0, 1.0) if roi is None else roi
        if out_w == 1:
            x = np.full(out_len, (end - start) * (in_len - 1) / 2)
        else:
            x = y * (end - start) * (in_len - 1) / (out_w - 1)
        x = x + start * (in_len - 1)
        return x, (x < 0) | (x > in_len - 1)
    raise AclError(ErrorCode.INVALID_PARAM, f"Resize: unknown coordinate_transformation_mode '{ctm}'")


def _nearest_index(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    fl = np.floor(x)
    r = x - fl
    ups = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": np.zeros_like(r, bool),
           "ceil": r > 0}
    if nearest_mode not in ups:
        raise AclError(ErrorCode.INVALID_PARAM, f"Resize: unknown nearest_mode '{nearest_mode}'")
    return (fl + ups[nearest_mode]).astype(np.int64)


def _taps(x, scale, mode, cubic_a, antialias, exclude_outside, in_len):
    """Tap indices ``(out, n)`` (unclamped) and weights of linear or cubic interpolation at ``x``."""
    s = min(scale, 1.0) if antialias else 1.0
    support = 1 if mode == "linear" else 2
    start = math.floor(-support / s) + 1
    offsets = np.arange(start, 1 - start + 1)
    fl = np.floor(x)
    t = (offsets[None, :] - (x - fl)[:, None]) * s
    w = np.clip(1 - np.abs(t), 0, 1) if mode == "linear" else _cubic(t, cubic_a)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = fl.astype(np.int64)[:, None] + offsets[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return idx, w


def _resize_axis(data, axis, out_len, scale, roi, opts) -> np.ndarray:
    """Resize one axis of ``data`` to ``out_len``: a gather per tap, weighted and summed."""
    in_len = data.shape[axis]
    if out_len == 0 or data.size == 0:
        return np.zeros((*data.shape[:axis], out_len, *data.shape[axis + 1:]), dtype=data.dtype)
    x, outside = _source_coords(opts["ctm"], out_len, in_len, scale, roi)
    if opts["mode"] == "nearest":
        res = np.take(data, np.clip(_nearest_index(x, opts["nearest_mode"]), 0, in_len - 1), axis=axis)
    elif opts["mode"] in ("linear", "cubic"):
        idx, w = _taps(x, scale, opts["mode"], opts["cubic_a"], opts["antialias"], opts["exclude_outside"], in_len)
        idx, w = np.clip(idx, 0, in_len - 1), w.reshape(out_len, -1, *[1] * (data.ndim - axis - 1))
        res = np.take(data, idx[:, 0], axis=axis) * w[:, 0]
        for j in range(1, idx.shape[1]):
            res += np.take(data, idx[:, j], axis=axis) * w[:, j]
    else:
        raise AclError(ErrorCode.INVALID_PARAM, f"Resize: unknown mode '{opts['mode']}'")
    if outside is not None and outside.any():
        mask = outside.reshape((-1,) + (1,) * (data.ndim - axis - 1))
        res = np.where(mask, opts["extrapolation_value"], res)
    return res


def _cast_back(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float64 result to ``dtype``, rounding and saturating for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        y = np.clip(np.round(y), info.min, info.max)
    return y.astype(dtype)


def _output_plan(shape, axes, scales, sizes, policy):
    """Per-axis (scale, output length) for the resized axes."""
    if sizes is not None:
        ratios = [int(sz) / shape[a] for a, sz in zip(axes, sizes, strict=True)]
        if policy == "stretch":
            return ratios, [int(sz) for sz in sizes]
        if policy not in ("not_larger", "not_smaller"):
            raise AclError(ErrorCode.INVALID_PARAM, f"Resize: unknown keep_aspect_ratio_policy '{policy}'")
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        return [scale] * len(axes), [int(scale * shape[a] + 0.5) for a in axes]
    scales = np.asarray(scales, dtype=np.float32)
    lengths = [int(s * np.float32(shape[a])) for s, a in zip(scales, axes, strict=True)]  # float32, as onnxruntime
    return [float(s) for s in scales], lengths


def _resize(x, roi=None, scales=None, sizes=None, *, mode="nearest", ctm="half_pixel", cubic_a=-0.75,
            exclude_outside=0, extrapolation_value=0.0, nearest_mode="round_prefer_floor", antialias=0,
            axes=None, policy="stretch"):
    r = x.ndim
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    if scales is not None and np.size(scales) == 0:
        scales = None
    if sizes is not None and np.size(sizes) == 0:
        sizes = None
    if (scales is None) == (sizes is None):
        raise AclError(ErrorCode.INVALID_PARAM, "Resize: exactly one of scales and sizes must be given")
    count = len(sizes) if sizes is not None else len(scales)
    if count != len(axes):
        raise AclError(ErrorCode.INVALID_PARAM, f"Resize: {count} scales/sizes for {len(axes)} axes")
    scale_list, out_lens = _output_plan(x.shape, axes, scales, sizes, policy)
    rois = None
    if roi is not None and np.size(roi) and ctm == "tf_crop_and_resize":
        roi = np.asarray(roi, dtype=np.float64).ravel()
        n = len(roi) // 2
        rois = {a: (roi[i], roi[n + i]) for i, a in enumerate(axes if n == len(axes) else range(r))}
    opts = {"mode": mode, "ctm": ctm, "cubic_a": cubic_a, "exclude_outside": exclude_outside,
            "extrapolation_value": extrapolation_value, "nearest_mode": nearest_mode, "antialias": antialias}
    y = x if mode == "nearest" else x.astype(np.float64)
    for a, scale, out_len in zip(axes, scale_list, out_lens, strict=True):
        roi_a = None if rois is None else rois.get(a, (0.0, 1.0))
        if math.isclose(scale, 1.0) and out_len == x.shape[a] and (roi_a is None or roi_a == (0.0, 1.0)):
            continue
        y = _resize_axis(y, a, out_len, scale, roi_a, opts)
    return _cast_back(y, x.dtype) if y.dtype != x.dtype else y


@op("Resize", since=10)
def resize_10(x, scales, *, mode="nearest"):
    return _resize(x, scales=scales, mode=mode, ctm="asymmetric", nearest_mode="floor")


@op("Resize", since=11)
def resize(x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None, coordinate_transformation_mode="half_pixel",
           cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
           mode="nearest", nearest_mode="round_prefer_floor"):
    return _resize(x, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode, cubic_a=cubic_coeff_a,
                   exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                   nearest_mode=nearest_mode, antialias=antialias, axes=axes, policy=keep_aspect_ratio_policy)


def _upsample(x, scales, mode):
    mode = "linear" if mode == "bilinear" else mode
    return _resize(x, scales=np.asarray(scales, dtype=np.float32), mode=mode, ctm="asymmetric", nearest_mode="floor")


@op("Upsample", since=1)
def upsample_1(x, *, height_scale=1.0, mode="nearest", width_scale=1.0):
    return _upsample(x, [1.0, 1.0, height_scale, width_scale], mode)


@op("Upsample", since=7)
def upsample_7(x, *, mode="nearest", scales=None):
    return _upsample(x, scales, mode)


@op("Upsample", since=9)
def upsample(x, scales, *, mode="nearest"):
    return _upsample(x, scales, mode)


# ----------------------------------------------------------------------------------------- GridSample


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates off the borders ``lo``/``hi`` until they fall inside."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, np.where(above, x - hi, 0))
    n = np.floor(dx / span)
    r = dx - n * span
    even = n % 2 == 0
    return np.where(below, np.where(even, lo + r, hi - r), np.where(above, np.where(even, hi - r, lo + r), x))


def _gather_taps(flat, taps, dims, padding_mode, borders):
    """Values of ``flat`` ``(N, C, S)`` at integer tap coordinates (one ``(N, P)`` array per axis)."""
    index = np.zeros(taps[0].shape, dtype=np.int64)
    valid = np.ones(taps[0].shape, dtype=bool)
    for t, size, (lo, hi) in zip(taps, dims, borders, strict=True):
        if padding_mode == "zeros":
            valid &= (t >= 0) & (t < size)
        elif padding_mode == "reflection":
            t = np.trunc(_reflect(t.astype(np.float64), lo, hi))
        index = index * size + np.clip(t, 0, size - 1).astype(np.int64)
    values = np.take_along_axis(flat, index[:, None, :], axis=2)
    return values * valid[:, None, :] if padding_mode == "zeros" else values


@op("GridSample", since=16)
@op("GridSample", since=20)
def grid_sample(x, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("linear", "nearest", "cubic") or padding_mode not in ("zeros", "border", "reflection"):
        raise AclError(ErrorCode.INVALID_PARAM, f"GridSample: bad mode '{mode}' or padding_mode '{padding_mode}'")
    n, c = x.shape[:2]
    dims = x.shape[2:]
    nd = len(dims)
    dt = compute_dtype(np.result_type(x.dtype, grid.dtype))
    g = grid.astype(dt).reshape(n, math.prod(grid.shape[1:-1]), nd)
    borders = [(0.0, size - 1.0) if align_corners else (-0.5, size - 0.5) for size in dims]
    coords = []
    for i, size in enumerate(dims):
        u = g[..., nd - 1 - i]
        u = (u + 1) / 2 * (size - 1) if align_corners else ((u + 1) * size - 1) / 2
        if mode == "nearest":
            u = np.rint(u)
        lo, hi = borders[i]
        if padding_mode == "border" and mode != "cubic":  # cubic clamps each tap instead, as PyTorch does
            u = np.where((u < lo) | (u > hi), np.clip(u, 0, size - 1), u)
        elif padding_mode == "reflection":
            u = _reflect(u, lo, hi)
        coords.append(u)
    flat = x.astype(dt).reshape(n, c, math.prod(dims))
    if mode == "nearest":
        y = _gather_taps(flat, [np.trunc(u).astype(np.int64) for u in coords], dims, padding_mode, borders)
    else:
        bases = [np.floor(u) for u in coords]
        offsets = [0, 1] if mode == "linear" else [-1, 0, 1, 2]
        weights = []
        for u, b in zip(coords, bases, strict=True):
            f = u - b
            weights.append([1 - f, f] if mode == "linear" else [_cubic(f - o, -0.75) for o in offsets])
        y = np.zeros((n, c, g.shape[1]), dtype=dt)
        for combo in itertools.product(range(len(offsets)), repeat=nd):
            taps = [(b + offsets[k]).astype(np.int64) for b, k in zip(bases, combo, strict=True)]
            w = math.prod(weights[i][k] for i, k in enumerate(combo))
            y += _gather_taps(flat, taps, dims, padding_mode, borders) * w[:, None, :]
    return y.reshape(n, c, *grid.shape[1:-1]).astype(x.dtype, copy=False)


@op("AffineGrid", since=20)
def affine_grid(theta, size, *, align_corners=0):
    """Sampling grid ``(N, *spatial, nd)`` of ``theta`` applied to the normalised output coordinates."""
    spatial = [int(v) for v in np.asarray(size).ravel()[2:]]
    nd = len(spatial)
    if theta.shape[1:] != (nd, nd + 1):
        raise AclError(ErrorCode.INVALID_PARAM, f"AffineGrid: theta {theta.shape} does not match size {spatial}")
    axes = []
    for length in spatial:
        if align_corners:
            axes.append(np.linspace(-1.0, 1.0, length) if length > 1 else np.full(length, -1.0))
        else:
            axes.append((np.arange(length) * 2.0 + 1) / length - 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack([*mesh[::-1], np.ones(spatial)], axis=-1).reshape(-1, nd + 1)
    dt = compute_dtype(theta.dtype)
    out = np.matmul(base.astype(dt), theta.astype(dt).transpose(0, 2, 1))
    return out.reshape(theta.shape[0], *spatial, nd).astype(theta.dtype, copy=False)


# ------------------------------------------------------------------------------------------- RoiAlign


def _roi_axis(start, bin_size, out, grid, size):
    """Bilinear taps of an RoI's samples along one axis: low/high indices ``(out, grid)`` and weights."""
    pos = start + np.arange(out)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0.0)
    low = np.floor(pos).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, size - 1, low + 1)
    frac = np.where(edge, 0.0, pos - low)
    return low, high, (1 - frac) * valid, frac * valid


def _axis_matrix(low, high, w_low, w_high, size):
    """Sum the sample weights of each output bin into an ``(out, size)`` interpolation matrix."""
    m = np.zeros((low.shape[0], size))
    rows = np.broadcast_to(np.arange(low.shape[0])[:, None], low.shape)
    np.add.at(m, (rows, low), w_low)
    np.add.at(m, (rows, high), w_high)
    return m


@op("RoiAlign", since=10)
@op("RoiAlign", since=16)
def roi_align(x, rois, batch_indices, *, coordinate_transformation_mode="output_half_pixel", mode="avg",
              output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    if mode not in ("avg", "max"):
        raise AclError(ErrorCode.INVALID_PARAM, f"RoiAlign: unknown mode '{mode}'")
    half_pixel = coordinate_transformation_mode == "half_pixel"
    c, height, width = x.shape[1:]
    data = x.astype(np.float64)
    y = np.zeros((rois.shape[0], c, output_height, output_width))
    for r, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices, strict=True)):
        x1, y1, x2, y2 = roi * spatial_scale - (0.5 if half_pixel else 0.0)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / output_height)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / output_width)
        ys = _roi_axis(y1, roi_h / output_height, output_height, grid_h, height)
        xs = _roi_axis(x1, roi_w / output_width, output_width, grid_w, width)
        if mode == "avg":
            wy, wx = _axis_matrix(*ys, height), _axis_matrix(*xs, width)
            y[r] = np.einsum("ph,chw,qw->cpq", wy, data[b], wx, optimize=True) / max(grid_h * grid_w, 1)
        elif grid_h * grid_w:
            rows = np.stack(ys[:2], -1)[:, :, :, None, None, None]
            cols = np.stack(xs[:2], -1)[None, None, None]
            w = np.stack(ys[2:], -1)[:, :, :, None, None, None] * np.stack(xs[2:], -1)[None, None, None]
            y[r] = (data[b][:, rows, cols] * w).max(axis=(2, 3, 5, 6))
    return y.astype(x.dtype)


# -------------------------------------------------------------------------------- NonMaxSuppression


def _corners(boxes: np.ndarray, center_point_box: int) -> tuple[np.ndarray, np.ndarray]:
    """Low and high corners ``(S, 2)`` of boxes given as corners (either order) or centre and size."""
    if center_point_box:
        half = boxes[:, 2:] / 2
        return boxes[:, :2] - half, boxes[:, :2] + half
    return np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])


def _iou(lo, hi, i: int, others: np.ndarray) -> np.ndarray:
    """IoU of box ``i`` with each of ``others``; 0 where they do not overlap or one has no area."""
    extent = np.minimum(hi[i], hi[others]) - np.maximum(lo[i], lo[others])
    inter = np.clip(extent, 0, None).prod(axis=-1)
    area_i, area = (hi[i] - lo[i]).prod(), (hi[others] - lo[others]).prod(axis=-1)
    union = area_i + area - inter
    ok = (inter > 0) & (area_i > 0) & (area > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def _scalar(value, default):
    """The single value of an optional scalar input, or ``default`` when it is omitted or empty."""
    return default if value is None or np.size(value) == 0 else np.ravel(value)[0]


@op("NonMaxSuppression", since=10)
def non_max_suppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None,
                        *, center_point_box=0):
    """Greedy per-class NMS; rows of ``[batch, class, box]`` in selection order.

    Each step keeps the best remaining box and drops those overlapping it, so the Python loop runs
    once per selected box.
    """
    limit = int(_scalar(max_output_boxes_per_class, 0))
    iou_t = float(_scalar(iou_threshold, 0.0))
    score_t = _scalar(score_threshold, None)
    found = []
    for b in range(boxes.shape[0] if limit > 0 else 0):
        lo, hi = _corners(boxes[b].astype(np.float64), center_point_box)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            cand = np.arange(s.shape[0]) if score_t is None else np.flatnonzero(s > score_t)
            remaining = cand[np.argsort(-s[cand], kind="stable")]
            chosen = 0
            while remaining.size and chosen < limit:
                best, remaining = remaining[0], remaining[1:]
                found.append((b, c, best))
                chosen += 1
                remaining = remaining[~(_iou(lo, hi, best, remaining) > iou_t)]
    return np.array(found, dtype=np.int64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------ ImageDecoder


@op("ImageDecoder", since=20)
def image_decoder(encoded_stream, *, pixel_format="RGB"):
    """Decode an encoded image (any format Pillow reads) to ``(H, W, 3)`` RGB/BGR or ``(H, W, 1)`` uint8."""
    if pixel_format not in ("RGB", "BGR", "Grayscale"):
        raise AclError(ErrorCode.INVALID_PARAM, f"ImageDecoder: unknown pixel_format '{pixel_format}'")
    try:
        img = PIL.Image.open(io.BytesIO(np.asarray(encoded_stream, dtype=np.uint8).tobytes()))
        img.load()
    except (OSError, ValueError) as exc:
        raise AclError(ErrorCode.INVALID_PARAM, f"ImageDecoder: cannot decode image: {exc}") from exc
    if pixel_format == "Grayscale":
        return np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1] if pixel_format == "BGR" else rgb)
