"""Attention family (seed layer 2, NN library): Attention, RotaryEmbedding, LinearAttention, FlexAttention, and
``opencann::Attention``, the fused scaled dot-product attention that :mod:`opencann.compiler.passes.fuse_attention`
emits.

Scores are computed in the input precision (as ONNX's function bodies do); masks become one additive
bias of ``0``/``-inf`` terms, and a query row whose bias is ``-inf`` everywhere yields zeros, not NaN.

``opencann::Attention(Q, K, V, mask?)`` computes ``softmax(scale * q @ k^T + mask) @ v`` where ``q``, ``k`` and
``v`` are strided 4-D views (N1, N2, S, D) of the contiguous inputs, as the head-splitting Reshape/Transpose/
Split/Gather nodes it replaces saw them: the ``*_view`` attributes are ``[offset, 4 sizes, 4 strides]`` in
elements. The result is written through ``y_view``, a view of the same form of the contiguous output of shape
``y_shape`` (the head-merging Transpose/Reshape). ``mask`` (additive, or boolean: True keeps) broadcasts
against the scores (N1, N2, Sq, Sk). ``low`` (ONNX dtype code, 0 for none) rounds the products' operands
to float16/bfloat16 (mixed precision: the matrix engine's inputs; accumulation and softmax stay float32).
Low-precision inputs compute their softmax in float32. A query whose keys are all masked gets NaN probabilities,
as Softmax gives, or zeros with ``zero_nan_rows`` (PyTorch's exported ``Where(IsNaN(p), 0, p)``).
"""
import numpy as np
from onnx import defs, helper

from opencann.compiler.dtypes import from_onnx
from opencann.compiler.ir import TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import OPENCANN_DOMAIN, op


def _matmul(a, b):
    """``a @ b`` in ``a``'s dtype (NumPy promotes bfloat16 products to float32)."""
    return np.matmul(a, b).astype(a.dtype, copy=False)


def _split_heads(x, num_heads):
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = x.shape
    if num_heads is None or hidden % num_heads:
        raise AclError(ErrorCode.INVALID_PARAM, f"attention: hidden size {hidden} is not a multiple of "
                                                f"the head count {num_heads}")
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B, H, S, D) -> (B, S, H*D)."""
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def _repeat_kv(x, q_heads):
    """Share each K/V head among ``q_heads / kv_heads`` consecutive query heads (GQA/MQA)."""
    kv_heads = x.shape[1]
    if q_heads == kv_heads:
        return x
    if q_heads % kv_heads:
        raise AclError(ErrorCode.INVALID_PARAM, f"attention: {q_heads} query heads are not a multiple of "
                                                f"{kv_heads} key/value heads")
    return np.repeat(x, q_heads // kv_heads, axis=1)


def _guarded_softmax(x, masked_rows=None):
    """Softmax over the last axis; all ``-inf`` rows (and ``masked_rows``) give zeros."""
    m = np.max(x, axis=-1, keepdims=True)
    dead = np.isneginf(m)
    e = np.exp(x - np.where(dead, np.zeros((), x.dtype), m))
    s = np.sum(e, axis=-1, keepdims=True)
    p = e / np.where(s == 0, np.ones((), x.dtype), s)
    if masked_rows is not None:
        p = np.where(masked_rows, np.zeros((), p.dtype), p)
    return p


def _structural_mask(q_len, kv_len, offset, is_causal, left, right, nonpad):
    """Keys each query may see from causality, the sliding window and padding: bool (B|1, 1, q, kv)."""
    i = np.arange(q_len).reshape(-1, 1) + np.reshape(offset, (-1, 1, 1))
    j = np.arange(kv_len).reshape(1, -1)
    allowed = np.ones((1, q_len, kv_len), dtype=bool)
    if is_causal:
        allowed = allowed & (j <= i)
    if left >= 0:
        allowed = allowed & (i - j <= left)
    if right >= 0:
        allowed = allowed & (j - i <= right)
    if nonpad is not None:
        allowed = allowed & (j < np.reshape(nonpad, (-1, 1, 1)))
    return allowed[:, None]


def _attention_bias(attn_mask, dtype, q_len, kv_len, structural):
    """The additive bias (float mask + ``-inf`` where disallowed), padded to ``kv_len`` keys."""
    ninf = dtype.type(-np.inf)
    bias = np.where(structural, dtype.type(0), ninf)
    if attn_mask is None:
        return bias
    pad = kv_len - attn_mask.shape[-1]
    if pad > 0:
        widths = [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)]
        attn_mask = np.pad(attn_mask, widths, constant_values=False if attn_mask.dtype == bool else -np.inf)
    if attn_mask.dtype == bool:
        return bias + np.where(attn_mask, dtype.type(0), ninf)
    return bias + attn_mask.astype(dtype, copy=False)


@op("Attention", since=23)
@op("Attention", since=24)
@op("Attention", since=25)
def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None,
              softcap=0.0, softmax_precision=None, left_window_size=-1, right_window_size=-1):
    if q.ndim != k.ndim or q.ndim != v.ndim or q.ndim not in (3, 4):
        raise AclError(ErrorCode.INVALID_PARAM, "Attention: Q, K and V must all be 3-D or all 4-D")
    if (past_key is None) != (past_value is None):
        raise AclError(ErrorCode.INVALID_PARAM, "Attention: past_key and past_value go together")
    packed = q.ndim == 3
    if packed:
        q, k, v = _split_heads(q, q_num_heads), _split_heads(k, kv_num_heads), _split_heads(v, kv_num_heads)
    dtype = q.dtype
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    root = dtype.type(np.sqrt(scale))
    if past_key is not None:
        k = np.concatenate([past_key, k], axis=2)
        v = np.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = np.asarray(nonpad_kv_seqlen, dtype=np.int64) - q_len
    else:
        offset = 0
    structural = _structural_mask(q_len, kv_len, offset, is_causal, left_window_size, right_window_size,
                                  nonpad_kv_seqlen)
    bias = _attention_bias(attn_mask, dtype, q_len, kv_len, structural)
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    raw = _matmul(q * root, np.swapaxes(k * root, -1, -2))
    capped = raw if softcap <= 0 else np.tanh(raw / dtype.type(softcap)) * dtype.type(softcap)
    biased = capped + bias
    scores = biased if softmax_precision is None else biased.astype(from_onnx(softmax_precision))
    probs = _guarded_softmax(scores, np.isneginf(np.max(bias, axis=-1, keepdims=True)))
    probs = probs.astype(dtype, copy=False)
    y = _matmul(probs, v)
    qk_out = (raw, capped, biased, probs)[qk_matmul_output_mode]
    return (_merge_heads(y) if packed else y), present_key, present_value, qk_out


@op("RotaryEmbedding", since=23)
def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=None,
                     rotary_embedding_dim=0):
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)
    elif num_heads:
        xs = x.reshape(x.shape[0], x.shape[1], num_heads, x.shape[2] // num_heads)
    else:
        raise AclError(ErrorCode.INVALID_PARAM, "RotaryEmbedding: num_heads is required for 3-D input")
    dim = rotary_embedding_dim or xs.shape[-1]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    if cos_cache.shape[-1] != dim // 2 or sin_cache.shape[-1] != dim // 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"RotaryEmbedding: caches must have {dim // 2} columns")
    cos, sin = cos_cache[:, :, None, :], sin_cache[:, :, None, :]
    rot = xs[..., :dim]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., :dim // 2], rot[..., dim // 2:])
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if interleaved:
        rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rot, xs[..., dim:]], axis=-1).astype(x.dtype, copy=False)
    return y.transpose(0, 2, 1, 3) if x.ndim == 4 else y.reshape(x.shape)


@op("LinearAttention", since=27)
def linear_attention(query, key, value, past_state=None, decay=None, beta=None, *, chunk_size=64,
                     kv_num_heads=None, q_num_heads=None, scale=0.0, update_rule="gated_delta"):
    """Runs the recurrence token by token in float32 (chunking is only a speed hint)."""
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise AclError(ErrorCode.INVALID_PARAM, f"LinearAttention: unknown update_rule '{update_rule}'")
    gated, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta", "gated_delta")
    if (decay is not None) != gated or (beta is not None) != delta:
        raise AclError(ErrorCode.INVALID_PARAM, f"LinearAttention: update_rule '{update_rule}' "
                                                f"{'needs' if gated else 'forbids'} decay and "
                                                f"{'needs' if delta else 'forbids'} beta")
    b, t, _ = query.shape
    f32 = np.float32
    q = _split_heads(query, q_num_heads).astype(f32)
    k = _split_heads(key, kv_num_heads).astype(f32)
    v = _split_heads(value, kv_num_heads).astype(f32)
    d_k, d_v = q.shape[-1], v.shape[-1]
    if gated:
        heads = decay.shape[-1] // kv_num_heads
        g = np.exp(decay.reshape(b, t, kv_num_heads, heads).transpose(0, 2, 1, 3).astype(f32))
    if delta:
        rate = beta.reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(f32)
    state = (np.zeros((b, kv_num_heads, d_k, d_v), f32) if past_state is None else past_state.astype(f32))
    s = f32(scale or 1.0 / np.sqrt(d_k))
    out = np.empty((b, q_num_heads, t, d_v), f32)
    for i in range(t):
        if gated:
            state = state * g[:, :, i, :, None]
        v_t = v[:, :, i]
        if delta:
            v_t = rate[:, :, i] * (v_t - np.einsum("bhdm,bhd->bhm", state, k[:, :, i]))
        state = state + k[:, :, i, :, None] * v_t[:, :, None, :]
        out[:, :, i] = s * np.einsum("bhd,bhdm->bhm", q[:, :, i], _repeat_kv(state, q_num_heads))
    state_dtype = query.dtype if past_state is None else past_state.dtype
    return _merge_heads(out).astype(query.dtype), state.astype(state_dtype)


_FLEX_SCHEMA = defs.get_schema("FlexAttention", 1, "ai.onnx.preview")


@op("FlexAttention", since=1, domain="ai.onnx.preview", schema=_FLEX_SCHEMA)
def flex_attention(q, k, v, *, scale=None, score_mod=None, prob_mod=None, softmax_precision=None):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise AclError(ErrorCode.INVALID_PARAM, "FlexAttention: Q, K and V must be 4-D")
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    root = np.asarray(np.sqrt(np.float32(scale)), dtype=q.dtype)
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    if softmax_precision is not None:
        work = from_onnx(softmax_precision)
    else:
        work = np.dtype(np.float64 if q.dtype == np.float64 else np.float32)
    scores = _matmul(q * root, np.swapaxes(k * root, -1, -2)).astype(work)
    if score_mod is not None:
        scores = np.asarray(score_mod(scores)[0], dtype=work)
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    probs = e / np.sum(e, axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = np.asarray(prob_mod(probs)[0], dtype=work)
    return np.matmul(probs, v.astype(work)).astype(v.dtype)


# --- opencann::Attention -------------------------------------------------------------------------

def _fused_schema():
    opt = defs.OpSchema.FormalParameterOption
    inputs = [defs.OpSchema.FormalParameter(n, "T" if n != "mask" else "M", "", param_option=o)
              for n, o in (("Q", opt.Single), ("K", opt.Single), ("V", opt.Single), ("mask", opt.Optional))]
    attrs = {"q_view": [0], "k_view": [0], "v_view": [0], "y_view": [0], "y_shape": [0], "scale": 1.0, "low": 0,
             "zero_nan_rows": 0}
    return defs.OpSchema(
        "Attention", OPENCANN_DOMAIN, 1, "softmax(scale * q @ k^T + mask) @ v over strided head views",
        inputs=inputs, outputs=[defs.OpSchema.FormalParameter("Y", "T", "")],
        type_constraints=[("T", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("M", ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)",
                                 "tensor(bool)"], "")],
        attributes=[defs.OpSchema.Attribute(k, helper.make_attribute(k, v), "") for k, v in attrs.items()])


def _infer_fused(node):
    q = node.inputs[0].type
    return [TensorType(q.dtype, tuple(node.attrs["y_shape"])) if isinstance(q, TensorType) else None]


def head_view(x: np.ndarray, spec, name: str, writeable: bool = False) -> np.ndarray:
    """The strided (N1, N2, S, D) view ``spec`` = [offset, sizes, strides] of contiguous ``x``, bounds-checked."""
    spec = [int(s) for s in spec]
    if len(spec) != 9 or not x.flags.c_contiguous:
        raise AclError(ErrorCode.INVALID_PARAM, f"opencann::Attention: bad {name} view {spec}")
    off, shape, strides = spec[0], spec[1:5], spec[5:]
    last = off + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if off < 0 or min(shape) <= 0 or min(strides) < 0 or last >= x.size:
        raise AclError(ErrorCode.INVALID_PARAM, f"opencann::Attention: {name} view {spec} does not fit an input "
                                                f"of shape {x.shape}")
    flat = x.reshape(-1)[off:]
    return np.lib.stride_tricks.as_strided(flat, shape, [s * x.itemsize for s in strides], writeable=writeable)


def _rounded(x: np.ndarray, low: int) -> np.ndarray:
    return x if not low else x.astype(from_onnx(low)).astype(x.dtype)


@op("Attention", domain=OPENCANN_DOMAIN, infer=_infer_fused, schema=_fused_schema())
def fused_attention(q, k, v, mask=None, *, q_view, k_view, v_view, y_view, y_shape, scale=1.0, low=0,
                    zero_nan_rows=0):
    dtype = q.dtype
    work = np.dtype(np.float64 if dtype == np.float64 else np.float32)
    qh, kh, vh = (head_view(np.ascontiguousarray(x), s, n) for x, s, n in ((q, q_view, "Q"), (k, k_view, "K"),
                                                                            (v, v_view, "V")))
    if qh.shape[:2] != kh.shape[:2] or kh.shape[:3] != vh.shape[:3] or qh.shape[3] != kh.shape[3]:
        raise AclError(ErrorCode.INVALID_PARAM, f"opencann::Attention: head views Q {qh.shape}, K {kh.shape}, "
                                                f"V {vh.shape} do not match")
    scores = np.matmul(_rounded(qh, low), np.swapaxes(_rounded(kh, low), -1, -2)).astype(dtype, copy=False)
    scores = scores.astype(work) * work.type(scale)
    if mask is not None:
        scores = scores + (np.where(mask, work.type(0), work.type(-np.inf)) if mask.dtype == bool else mask)
    with np.errstate(invalid="ignore"):  # rows masked everywhere give NaN, as Softmax does
        e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    probs = (e / np.sum(e, axis=-1, keepdims=True)).astype(dtype)
    if zero_nan_rows:
        probs = np.where(np.isnan(probs), dtype.type(0), probs)
    y = np.zeros(tuple(y_shape), dtype)
    yh = head_view(y, y_view, "Y", writeable=True)
    if yh.shape != (*qh.shape[:3], vh.shape[3]):
        raise AclError(ErrorCode.INVALID_PARAM, f"opencann::Attention: output view {yh.shape} does not match")
    yh[...] = np.matmul(_rounded(probs, low), _rounded(vh, low))
    return y
