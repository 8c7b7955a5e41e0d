"""Classic ML operators of the ``ai.onnx.ml`` domain (seed layer 2, NN library): LabelEncoder,
TreeEnsemble, ArrayFeatureExtractor, Binarizer.

Trees are walked for the whole batch at once: every (sample, tree) pair advances one level per step.
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op

ML = "ai.onnx.ml"


def _lookup(x, keys, values, default):
    """Maps each element of ``x`` through ``keys -> values`` (last repeat wins; NaN keys match NaN)."""
    table = dict(zip(keys.tolist(), values.tolist(), strict=True))
    out = np.full(x.shape, default, dtype=values.dtype)
    if not table or x.size == 0:
        return out
    flat = x.reshape(-1)
    if keys.dtype == object:
        ks = np.array(list(table), dtype=str)
        flat = flat.astype(str)
    else:
        ks = np.array([k for k in table if k == k], dtype=keys.dtype)
    vs = np.array([table[k] for k in ks.tolist()], dtype=values.dtype)
    order = np.argsort(ks, kind="stable")
    ks, vs = ks[order], vs[order]
    pos = np.clip(np.searchsorted(ks, flat), 0, max(len(ks) - 1, 0))
    hit = ks[pos] == flat if len(ks) else np.zeros(flat.shape, bool)
    res = out.reshape(-1)
    res[hit] = vs[pos[hit]]
    nan_value = next((v for k, v in table.items() if isinstance(k, float) and k != k), None)
    if nan_value is not None:
        res[np.isnan(flat)] = nan_value
    return res.reshape(x.shape)


def _first_set(**candidates):
    """The one attribute of ``candidates`` that is set, as an array (object arrays for strings)."""
    for name, value in candidates.items():
        if value is not None:
            if name.endswith("strings"):
                return np.array(value, dtype=object)
            return np.asarray(value, dtype={"int64s": np.int64, "floats": np.float32}.get(name.split("_")[-1]))
    raise AclError(ErrorCode.INVALID_PARAM, f"LabelEncoder: one of {', '.join(candidates)} must be set")


@op("LabelEncoder", since=1, domain=ML)
def label_encoder_1(x, *, classes_strings=None, default_int64=-1, default_string="_Unused"):
    classes = np.array(classes_strings or [], dtype=object)
    if x.dtype == object:
        return _lookup(x, classes, np.arange(len(classes), dtype=np.int64), default_int64)
    return _lookup(x.astype(np.int64), np.arange(len(classes), dtype=np.int64), classes, default_string)


@op("LabelEncoder", since=2, domain=ML)
@op("LabelEncoder", since=4, domain=ML)
def label_encoder(x, *, default_float=-0.0, default_int64=-1, default_string="_Unused", default_tensor=None,
                  keys_floats=None, keys_int64s=None, keys_strings=None, keys_tensor=None,
                  values_floats=None, values_int64s=None, values_strings=None, values_tensor=None):
    keys = _first_set(keys_tensor=keys_tensor, keys_strings=keys_strings, keys_int64s=keys_int64s,
                      keys_floats=keys_floats)
    values = _first_set(values_tensor=values_tensor, values_strings=values_strings, values_int64s=values_int64s,
                        values_floats=values_floats)
    if len(keys) != len(values):
        raise AclError(ErrorCode.INVALID_PARAM, f"LabelEncoder: {len(keys)} keys but {len(values)} values")
    if default_tensor is not None:
        default = default_tensor.reshape(-1)[0]
    elif values.dtype == object:
        default = default_string
    elif values.dtype.kind in "iu":
        default = -1 if values_tensor is not None else default_int64
    else:
        default = -0.0 if values_tensor is not None else default_float
    if keys.dtype != object and x.dtype != object:
        x = x.astype(keys.dtype, copy=False)
    return _lookup(x, keys.reshape(-1), values.reshape(-1), default)


_MEMBER = 6


def _membership_table(modes, membership_values):
    """One row of set members (NaN-padded) per node; only BRANCH_MEMBER rows are filled."""
    table = np.full((len(modes), 1), np.nan)
    members = np.where(modes == _MEMBER)[0]
    if len(members):
        values = np.asarray(membership_values, dtype=np.float64).reshape(-1)
        sets = np.split(values, np.where(np.isnan(values))[0] + 1)
        sets = [s[~np.isnan(s)] for s in (sets[:-1] if sets[-1].size == 0 else sets)]
        if len(sets) != len(members):
            raise AclError(ErrorCode.INVALID_PARAM, f"TreeEnsemble: {len(sets)} membership sets for "
                                                    f"{len(members)} BRANCH_MEMBER nodes")
        table = np.full((len(modes), max(len(s) for s in sets) or 1), np.nan)
        for node, s in zip(members, sets, strict=True):
            table[node, :len(s)] = s
    return table


def _walk(x, roots, nodes):
    """The leaf each (sample, tree) reaches: int array (N, trees)."""
    feat, split, modes, t_id, t_leaf, f_id, f_leaf, nan_true, members = nodes
    n = x.shape[0]
    cur = np.broadcast_to(np.asarray(roots, dtype=np.int64), (n, len(roots))).copy()
    leaf = np.full(cur.shape, -1, dtype=np.int64)
    rows = np.arange(n)[:, None]
    for _ in range(len(modes) + 1):
        active = leaf < 0
        if not active.any():
            return leaf
        node = np.where(active, cur, 0)
        xv = x[rows, feat[node]]
        s = split[node]
        m = modes[node]
        cond = np.select([m == 0, m == 1, m == 2, m == 3, m == 4, m == 5],
                         [xv <= s, xv < s, xv >= s, xv > s, xv == s, xv != s],
                         default=np.any(xv[..., None] == members[node], axis=-1))
        cond |= np.isnan(xv) & nan_true[node]
        nxt = np.where(cond, t_id[node], f_id[node])
        is_leaf = np.where(cond, t_leaf[node], f_leaf[node]) & active
        leaf = np.where(is_leaf, nxt, leaf)
        cur = np.where(active & ~is_leaf, nxt, cur)
    raise AclError(ErrorCode.INVALID_PARAM, "TreeEnsemble: the trees contain a cycle")


def _erfinv(x):
    """Winitzki's approximation of erf^-1 (the one ONNX Runtime uses for PROBIT)."""
    a = 0.147
    ln = np.log((1 - x) * (1 + x))
    v = 2 / (np.pi * a) + 0.5 * ln
    return np.sign(x) * np.sqrt(-v + np.sqrt(v * v - ln / a))


def _post_transform(y, kind):
    if kind == 1:
        e = np.exp(y - y.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if kind == 2:
        return 1 / (1 + np.exp(-y))
    if kind == 3:
        nz = y != 0
        e = np.where(nz, np.exp(y - np.max(np.where(nz, y, -np.inf), axis=1, keepdims=True)), 0)
        total = e.sum(axis=1, keepdims=True)
        return e / np.where(total == 0, 1, total)
    if kind == 4:
        return np.sqrt(2) * _erfinv(2 * y - 1)
    return y


@op("TreeEnsemble", since=5, domain=ML)
def tree_ensemble(x, *, aggregate_function=1, leaf_targetids=None, leaf_weights=None, membership_values=None,
                  n_targets=None, nodes_falseleafs=None, nodes_falsenodeids=None, nodes_featureids=None,
                  nodes_hitrates=None, nodes_missing_value_tracks_true=None, nodes_modes=None, nodes_splits=None,
                  nodes_trueleafs=None, nodes_truenodeids=None, post_transform=0, tree_roots=None):
    """Targets no leaf reaches stay 0 (also under MIN/MAX aggregation)."""
    modes = np.asarray(nodes_modes, dtype=np.int64).reshape(-1)
    count = len(modes)
    nan_true = (np.zeros(count, bool) if nodes_missing_value_tracks_true is None
                else np.asarray(nodes_missing_value_tracks_true, dtype=bool))
    nodes = (np.asarray(nodes_featureids, np.int64), np.asarray(nodes_splits, np.float64).reshape(-1), modes,
             np.asarray(nodes_truenodeids, np.int64), np.asarray(nodes_trueleafs, bool),
             np.asarray(nodes_falsenodeids, np.int64), np.asarray(nodes_falseleafs, bool), nan_true,
             _membership_table(modes, membership_values))
    data = x.reshape(x.shape[0], -1).astype(np.float64)
    leaves = _walk(data, tree_roots, nodes)
    weights = np.asarray(leaf_weights, np.float64).reshape(-1)[leaves]
    targets = np.asarray(leaf_targetids, np.int64)[leaves]
    rows = np.broadcast_to(np.arange(x.shape[0])[:, None], leaves.shape)
    y = np.zeros((x.shape[0], n_targets))
    if aggregate_function in (0, 1):
        np.add.at(y, (rows, targets), weights)
        if aggregate_function == 0:
            y /= len(tree_roots)
    elif aggregate_function in (2, 3):
        ufunc, start = (np.minimum, np.inf) if aggregate_function == 2 else (np.maximum, -np.inf)
        y.fill(start)
        ufunc.at(y, (rows, targets), weights)
        y[np.isinf(y) & (np.sign(y) == np.sign(start))] = 0
    else:
        raise AclError(ErrorCode.INVALID_PARAM, f"TreeEnsemble: bad aggregate_function {aggregate_function}")
    return _post_transform(y, post_transform).astype(x.dtype)


@op("ArrayFeatureExtractor", since=1, domain=ML)
def array_feature_extractor(x, indices):
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[-1]):
        raise AclError(ErrorCode.INVALID_PARAM, f"ArrayFeatureExtractor: index out of range [0, {x.shape[-1]})")
    z = np.take(x, idx, axis=-1)
    return z.reshape(1, -1) if x.ndim == 1 else z


@op("Binarizer", since=1, domain=ML)
def binarizer(x, *, threshold=0.0):
    return (x > threshold).astype(x.dtype)
