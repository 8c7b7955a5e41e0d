"""Attention, signal, text, classic-ML and random kernels: dtypes, shapes and options ONNX's suite skips.

Each case runs one node through the ONNX backend; the oracle is NumPy, or onnxruntime where it
implements the case.
"""
import functools

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from opencann.errors import AclError
from tests.ops.single_node import check_node, run_node

BF16 = ml_dtypes.bfloat16
ML = "ai.onnx.ml"
RNG = np.random.default_rng(0)


run = functools.partial(run_node, opset=23, domain_opset=5)
check_ort = functools.partial(check_node, opset=23, domain_opset=5, f64=True)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def naive_attention(q, k, v, mask):
    """Per-head softmax(q k^T / sqrt(d) + mask) v in float64, K/V heads shared by consecutive Q heads."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


# --- attention -------------------------------------------------------------------------------------

def test_attention_gqa_bool_mask_past_matches_naive():
    q, k, v = f32(2, 4, 3, 8), f32(2, 2, 3, 8), f32(2, 2, 3, 6)
    pk, pv = f32(2, 2, 2, 8), f32(2, 2, 2, 6)
    mask = RNG.random((3, 5)) > 0.3
    mask[:, 0] = True
    y, present_k, present_v = run("Attention", q, k, v, mask, pk, pv, n_outputs=3)
    want = naive_attention(q, np.concatenate([pk, k], 2), np.concatenate([pv, v], 2), np.where(mask, 0, -np.inf))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert present_k.shape == (2, 2, 5, 8) and present_v.shape == (2, 2, 5, 6)


def test_attention_3d_causal_softcap_matches_onnxruntime():
    q, k, v = f32(1, 4, 16), f32(1, 4, 8), f32(1, 4, 8)
    check_ort("Attention", q, k, v, q_num_heads=4, kv_num_heads=2, is_causal=1, softcap=3.0)


@pytest.mark.parametrize("dt", [np.float16, BF16])
def test_attention_low_precision_keeps_dtype(dt):
    q, k, v = f32(1, 2, 4, 8), f32(1, 2, 4, 8), f32(1, 2, 4, 8)
    y = run("Attention", q.astype(dt), k.astype(dt), v.astype(dt), is_causal=1)
    assert y.dtype == np.dtype(dt)
    causal = np.where(np.tril(np.ones((4, 4), bool)), 0, -np.inf)
    np.testing.assert_allclose(y.astype(np.float32), naive_attention(q, k, v, causal), atol=0.05)


def test_attention_fully_masked_rows_are_zero_in_all_modes():
    q, k, v = f32(1, 1, 2, 4), f32(1, 1, 3, 4), f32(1, 1, 3, 4)
    mask = np.array([[False] * 3, [True] * 3])
    y, probs = run("Attention", q, k, v, mask, n_outputs=4, qk_matmul_output_mode=3)[::3]
    assert not np.isnan(y).any() and (y[0, 0, 0] == 0).all() and (probs[0, 0, 0] == 0).all()
    np.testing.assert_allclose(probs[0, 0, 1].sum(), 1, rtol=1e-6)


def test_attention_external_cache_pads_short_mask():
    q, k, v = f32(2, 1, 2, 4), f32(2, 1, 5, 4), f32(2, 1, 5, 4)
    mask = np.zeros((2, 3), np.float32)
    y = run("Attention", q, k, v, mask, None, None, np.array([3, 2], np.int64), opset=24)
    for b, n in enumerate((3, 2)):
        np.testing.assert_allclose(y[b], naive_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], 0)[0],
                                   rtol=1e-5, atol=1e-6)


def test_attention_rejects_mixed_ranks():
    with pytest.raises(AclError):
        run("Attention", f32(1, 2, 8), f32(1, 1, 2, 8), f32(1, 1, 2, 8), q_num_heads=1, kv_num_heads=1)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_matches_onnxruntime(interleaved):
    x = f32(2, 3, 4, 8)
    cos, sin = f32(10, 2), f32(10, 2)
    pos = np.array([[0, 3, 9, 1], [2, 2, 5, 7]], np.int64)
    check_ort("RotaryEmbedding", x, cos, sin, pos, interleaved=interleaved, rotary_embedding_dim=4)


def test_rotary_embedding_float16_3d():
    x, cos, sin = f32(1, 2, 8), f32(1, 2, 2), f32(1, 2, 2)
    y = run("RotaryEmbedding", x.astype(np.float16), cos.astype(np.float16), sin.astype(np.float16), num_heads=2)
    want = run("RotaryEmbedding", x, cos, sin, num_heads=2)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), want, atol=1e-2)


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention_prefill_equals_chained_decode(rule):
    b, t, hq, hk, d = 1, 4, 2, 1, 4
    q, k, v = f32(b, t, hq * d), f32(b, t, hk * d) / 2, f32(b, t, hk * d)
    extra = [None, None]
    if "gated" in rule:
        extra[0] = -np.abs(f32(b, t, hk))
    if "delta" in rule:
        extra[1] = RNG.random((b, t, hk)).astype(np.float32)
    attrs = dict(update_rule=rule, q_num_heads=hq, kv_num_heads=hk)
    y, state = run("LinearAttention", q, k, v, None, *extra, n_outputs=2, opset=27, **attrs)
    ys = []
    past = np.zeros((b, hk, d, d), np.float32)
    for i in range(t):
        step = [None if e is None else e[:, i:i + 1] for e in extra]
        yi, past = run("LinearAttention", q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], past, *step,
                       n_outputs=2, opset=27, **attrs)
        ys.append(yi)
    np.testing.assert_allclose(np.concatenate(ys, 1), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(past, state, rtol=1e-5, atol=1e-6)


def test_linear_attention_rejects_missing_decay():
    with pytest.raises(AclError):
        run("LinearAttention", f32(1, 1, 4), f32(1, 1, 4), f32(1, 1, 4), n_outputs=2, opset=27,
            update_rule="gated", q_num_heads=1, kv_num_heads=1)


# --- signal ----------------------------------------------------------------------------------------

def test_dft_complex_padded_double():
    x = RNG.standard_normal((2, 5, 3, 2))
    y = run("DFT", x, np.array(8, np.int64), np.array(1, np.int64), opset=20)
    want = np.fft.fft(x[..., 0] + 1j * x[..., 1], n=8, axis=1)
    assert y.dtype == np.float64 and y.shape == (2, 8, 3, 2)
    np.testing.assert_allclose(y[..., 0] + 1j * y[..., 1], want, rtol=1e-12, atol=1e-12)


def test_dft_17_negative_axis_inverse_onesided_default_length():
    spectrum = np.fft.rfft(RNG.standard_normal((3, 10)), axis=-1)
    x = np.stack([spectrum.real, spectrum.imag], -1).astype(np.float32)
    y = run("DFT", x, opset=17, axis=-2, inverse=1, onesided=1)
    assert y.shape == (3, 10, 1)
    np.testing.assert_allclose(y[..., 0], np.fft.irfft(spectrum, axis=-1), rtol=1e-4, atol=1e-5)


def test_dft_float16_and_bad_axis():
    x = f32(1, 8, 1).astype(np.float16)
    assert run("DFT", x, opset=17).dtype == np.float16
    with pytest.raises(AclError):
        run("DFT", x, opset=17, axis=2)


def test_stft_complex_two_sided_matches_onnxruntime():
    signal = f32(2, 64, 2)
    check_ort("STFT", signal, np.array(16, np.int64), f32(32), np.array(32, np.int64), opset=17, onesided=0,
              rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_match_onnxruntime_in_double(op, periodic):
    check_ort(op, np.array(11, np.int64), opset=17, periodic=periodic, output_datatype=TensorProto.DOUBLE)


def test_mel_weight_matrix_matches_onnxruntime():
    args = [np.array(v, np.int64) for v in (10, 64, 16000)] + [np.array(v, np.float32) for v in (100, 6000)]
    check_ort("MelWeightMatrix", *args, opset=17)


# --- text ------------------------------------------------------------------------------------------

def strings(*values, shape=None):
    return np.array(values, dtype=object).reshape(shape or (len(values),))


def test_string_concat_broadcasts_2d():
    y = run("StringConcat", strings("a", "b", shape=(2, 1)), strings("x", "y", "z"), opset=20)
    assert y.dtype == object and y.tolist() == [["ax", "ay", "az"], ["bx", "by", "bz"]]


def test_string_normalizer_all_dropped_2d_and_unicode_case():
    y = run("StringNormalizer", strings("Stop", "STOP", shape=(1, 2)), opset=10, stopwords=["stop"])
    assert y.shape == (1, 1) and y.tolist() == [[""]]
    y = run("StringNormalizer", strings("Éte", "straße", "keep"), opset=10, case_change_action="UPPER",
            stopwords=["KEEP"])
    assert y.tolist() == ["ÉTE", "STRASSE"]


def test_string_split_2d_maxsplit_zero_and_empty_strings():
    y, n = run("StringSplit", strings("a b", "", "c", "d e f", shape=(2, 2)), n_outputs=2, opset=20, maxsplit=0)
    assert y.shape == (2, 2, 1) and y[1, 1, 0] == "d e f" and n.tolist() == [[1, 0], [1, 1]]


def test_regex_full_match_needs_whole_string():
    y = run("RegexFullMatch", strings("abc", "abcd", "ab", shape=(3, 1)), opset=20, pattern="a.c")
    assert y.dtype == bool and y[:, 0].tolist() == [True, False, False]


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_strings_weights_match_onnxruntime(mode):
    x = strings("a", "b", "a", "c", "b", "a", "d", "a", shape=(2, 4))
    check_ort("TfIdfVectorizer", x, opset=9, mode=mode, min_gram_length=1, max_gram_length=2, max_skip_count=1,
              ngram_counts=[0, 3], ngram_indexes=[4, 0, 1, 3, 2], pool_strings=["a", "b", "d", "a", "b", "b", "a"],
              weights=[0.5, 2.0, 1.5, 3.0, 0.25])


# --- ai.onnx.ml ------------------------------------------------------------------------------------

def test_label_encoder_float_keys_with_nan():
    x = np.array([1.5, np.nan, 7.0, -2.0], np.float32)
    y = run("LabelEncoder", x, domain=ML, keys_floats=[1.5, np.nan, -2.0], values_strings=["a", "nan", "c"],
            default_string="?")
    assert y.tolist() == ["a", "nan", "?", "c"]


def test_label_encoder_int_to_float_matches_onnxruntime():
    x = np.array([[3, 4], [5, 9]], np.int64)
    check_ort("LabelEncoder", x, domain=ML, keys_int64s=[3, 4, 5], values_floats=[1.0, 2.0, 3.0], default_float=-1.0)


def test_label_encoder_repeated_key_last_wins():
    """As ONNX specifies (onnxruntime keeps the first)."""
    y = run("LabelEncoder", np.array([3, 4], np.int64), domain=ML, keys_int64s=[3, 4, 3], values_int64s=[1, 2, 7])
    assert y.tolist() == [7, 2]


def test_label_encoder_1_both_directions():
    classes = ["a", "b", "c"]
    y = run("LabelEncoder", strings("c", "z"), domain=ML, domain_opset=1, classes_strings=classes)
    assert y.dtype == np.int64 and y.tolist() == [2, -1]
    y = run("LabelEncoder", np.array([1, 5], np.int64), domain=ML, domain_opset=1, classes_strings=classes,
            default_string="?")
    assert y.tolist() == ["b", "?"]


def test_tree_ensemble_average_and_logistic():
    attrs = dict(n_targets=2, aggregate_function=0, tree_roots=[0, 2],
                 nodes_modes=helper.make_tensor("m", TensorProto.UINT8, (3,), [0, 3, 4]),
                 nodes_featureids=[0, 1, 1],
                 nodes_splits=helper.make_tensor("s", TensorProto.FLOAT, (3,), [0.0, 0.5, 1.0]),
                 nodes_truenodeids=[1, 0, 2], nodes_trueleafs=[0, 1, 1],
                 nodes_falsenodeids=[2, 1, 3], nodes_falseleafs=[1, 1, 1],
                 nodes_missing_value_tracks_true=[1, 0, 0],
                 leaf_targetids=[0, 1, 0, 1],
                 leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, (4,), [0.5, -1.0, 2.0, 0.25]))
    x = np.array([[-1, 1], [-1, 0], [2, 1], [np.nan, 3], [1, 1]], np.float32)
    check_ort("TreeEnsemble", x, domain=ML, **attrs)
    raw = run("TreeEnsemble", x, domain=ML, **attrs)
    np.testing.assert_allclose(run("TreeEnsemble", x, domain=ML, post_transform=2, **attrs), 1 / (1 + np.exp(-raw)),
                               rtol=1e-6)


def test_array_feature_extractor_1d_strings_and_bounds():
    y = run("ArrayFeatureExtractor", strings("a", "b", "c"), np.array([2, 0], np.int64), domain=ML)
    assert y.shape == (1, 2) and y.tolist() == [["c", "a"]]
    with pytest.raises(AclError):
        run("ArrayFeatureExtractor", f32(2, 3), np.array([3], np.int64), domain=ML)


def test_binarizer_int32():
    y = run("Binarizer", np.array([-1, 0, 2], np.int32), domain=ML, threshold=0.5)
    assert y.dtype == np.int32 and y.tolist() == [0, 0, 1]


# --- random ----------------------------------------------------------------------------------------

def test_random_seeded_is_reproducible_and_typed():
    a = run("RandomNormal", opset=22, shape=[3, 4], dtype=TensorProto.BFLOAT16, seed=3.0)
    b = run("RandomNormal", opset=22, shape=[3, 4], dtype=TensorProto.BFLOAT16, seed=3.0)
    assert a.dtype == BF16 and a.shape == (3, 4) and np.array_equal(a, b)
    u = run("RandomUniformLike", np.zeros((0, 5), np.float16), opset=1, low=2.0, high=3.0)
    assert u.dtype == np.float16 and u.shape == (0, 5)
    u = run("RandomUniform", opset=1, shape=[1000], low=2.0, high=3.0, dtype=TensorProto.DOUBLE)
    assert u.dtype == np.float64 and 2 <= u.min() and u.max() < 3


def test_bernoulli_extremes_and_dtype():
    y = run("Bernoulli", np.array([0, 1, 0, 1], np.float32), opset=15, dtype=TensorProto.INT32)
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 0, 1]


def test_multinomial_picks_dominant_class():
    logits = np.array([[0, 50, 0], [-50, -50, 0]], np.float32)
    y = run("Multinomial", logits, opset=7, sample_size=6, seed=1.0)
    assert y.dtype == np.int32 and y.shape == (2, 6)
    assert (y[0] == 1).all() and (y[1] == 2).all()
