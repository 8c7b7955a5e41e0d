"""Signal processing (seed layer 2, NN library): DFT, STFT, window functions and MelWeightMatrix.

Complex tensors follow ONNX's layout: a trailing axis of size 2 holds (real, imaginary); real signals
have a trailing axis of size 1. Transforms run in the input precision (float32 stays float32, as
NumPy's pocketfft does it); float16 and bfloat16 go through float32.
"""
import numpy as np

from opencann.compiler.dtypes import from_onnx
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _work_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _to_complex(x):
    """[..., 1] real or [..., 2] (re, im) -> a complex (or real) array without the last axis."""
    x = x.astype(_work_dtype(x.dtype), copy=False)
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] == 2:
        return x[..., 0] + 1j * x[..., 1]
    raise AclError(ErrorCode.INVALID_PARAM, f"signal tensors end in an axis of size 1 or 2, got {x.shape}")


def _from_complex(c, dtype):
    """A complex array -> [..., 2] (re, im) of ``dtype``."""
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


def _dft(x, dft_length, axis, inverse, onesided):
    rank = x.ndim
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise AclError(ErrorCode.INVALID_PARAM, f"DFT: axis {axis} is out of range for rank {rank}")
    axis = axis % rank
    n = None if dft_length is None else int(np.asarray(dft_length).reshape(()))
    c = _to_complex(x)
    if onesided and inverse:
        return np.fft.irfft(c, n=n, axis=axis)[..., None].astype(x.dtype)
    if inverse:
        return _from_complex(np.fft.ifft(c, n=n, axis=axis), x.dtype)
    y = np.fft.fft(c, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(y.shape[axis] // 2 + 1), axis=axis)
    return _from_complex(y, x.dtype)


@op("DFT", since=17)
def dft_17(x, dft_length=None, *, axis=1, inverse=0, onesided=0):
    return _dft(x, dft_length, axis, inverse, onesided)


@op("DFT", since=20)
def dft(x, dft_length=None, axis=None, *, inverse=0, onesided=0):
    return _dft(x, dft_length, -2 if axis is None else int(np.asarray(axis).reshape(())), inverse, onesided)


@op("STFT", since=17)
def stft(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    length = signal.shape[1]
    if frame_length is not None:
        size = int(np.asarray(frame_length).reshape(()))
    else:
        size = length if window is None else window.shape[0]
    if window is not None and window.shape[0] != size:
        raise AclError(ErrorCode.INVALID_PARAM, f"STFT: window length {window.shape[0]} != frame_length {size}")
    step = int(np.asarray(frame_step).reshape(()))
    frames = (length - size) // step + 1
    if frames < 1 or step < 1:
        raise AclError(ErrorCode.INVALID_PARAM, f"STFT: no frame of {size} samples fits a {length}-sample "
                                                f"signal with step {step}")
    c = _to_complex(signal)
    idx = np.arange(frames)[:, None] * step + np.arange(size)
    framed = c[:, idx]
    if window is not None:
        framed = framed * window.astype(c.real.dtype, copy=False)
    y = np.fft.fft(framed, axis=-1)
    if onesided:
        y = y[..., :size // 2 + 1]
    return _from_complex(y, signal.dtype)


def _cosine_window(size, periodic, output_datatype, coeffs):
    """sum_k coeffs[k] * cos(2 pi k n / N) with N = size (periodic) or size - 1 (symmetric)."""
    n = int(np.asarray(size).reshape(()))
    denom = n if periodic else n - 1
    phase = 2 * np.pi * np.arange(n, dtype=np.float64) / max(denom, 1)
    y = sum(a * np.cos(k * phase) for k, a in enumerate(coeffs))
    return np.asarray(y, dtype=np.float64).astype(from_onnx(output_datatype))


@op("HannWindow", since=17)
def hann_window(size, *, output_datatype=1, periodic=1):
    return _cosine_window(size, periodic, output_datatype, (0.5, -0.5))


@op("HammingWindow", since=17)
def hamming_window(size, *, output_datatype=1, periodic=1):
    a0 = 25 / 46
    return _cosine_window(size, periodic, output_datatype, (a0, a0 - 1))


@op("BlackmanWindow", since=17)
def blackman_window(size, *, output_datatype=1, periodic=1):
    return _cosine_window(size, periodic, output_datatype, (0.42, -0.5, 0.08))


def _hz_to_mel(f):
    return 2595 * np.log10(1 + f / 700)


@op("MelWeightMatrix", since=17)
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *,
                      output_datatype=1):
    """Triangular filters with unit peaks on FFT bins spaced evenly on the mel scale."""
    bins, n_fft, rate = (int(np.asarray(a).reshape(())) for a in (num_mel_bins, dft_length, sample_rate))
    low, high = (_hz_to_mel(float(np.asarray(a).reshape(()))) for a in (lower_edge_hertz, upper_edge_hertz))
    mels = low + np.arange(bins + 2) * (high - low) / (bins + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    edges = ((n_fft + 1) * hz // rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(n_fft // 2 + 1)[:, None]
    rise = (j - left) / np.maximum(center - left, 1)
    fall = (right - j) / np.maximum(right - center, 1)
    out = np.where((j >= left) & (j <= center), np.where(center == left, j == center, rise), 0.0)
    out = np.where((j >= center) & (j < right), fall, out)
    return out.astype(from_onnx(output_datatype))
