"""Text operators (seed layer 2, NN library): StringConcat, StringNormalizer, StringSplit, RegexFullMatch,
TfIdfVectorizer.

String tensors are NumPy object arrays of ``str``. Regular expressions use Python's ``re``, which
agrees with RE2 on the common syntax (RE2's POSIX classes and ``\\C`` are not supported).
"""
import re

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _strings(values, shape):
    """An object array of ``shape`` from an iterable of str."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


@op("StringConcat", since=20)
def string_concat(x, y):
    return np.asarray(np.add(x.astype(object), y.astype(object)), dtype=object)


@op("StringNormalizer", since=10)
def string_normalizer(x, *, case_change_action="NONE", is_case_sensitive=0, locale=None, stopwords=None):
    """Drops stop words then changes case; ``locale`` is not used (Unicode default casing)."""
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise AclError(ErrorCode.INVALID_PARAM, f"StringNormalizer: input must be [C] or [1, C], got {x.shape}")
    words = [str(w) for w in x.reshape(-1)]
    if stopwords:
        fold = (lambda w: w) if is_case_sensitive else str.lower
        stop = {fold(w) for w in stopwords}
        words = [w for w in words if fold(w) not in stop]
    if case_change_action == "LOWER":
        words = [w.lower() for w in words]
    elif case_change_action == "UPPER":
        words = [w.upper() for w in words]
    elif case_change_action != "NONE":
        raise AclError(ErrorCode.INVALID_PARAM, f"StringNormalizer: bad case_change_action '{case_change_action}'")
    values = words or [""]
    return _strings(values, (1, len(values)) if x.ndim == 2 else (len(values),))


@op("StringSplit", since=20)
def string_split(x, *, delimiter=None, maxsplit=None):
    sep = delimiter or None
    parts = [str(s).split(sep, -1 if maxsplit is None else maxsplit) for s in x.reshape(-1)]
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    width = int(counts.max()) if counts.size else 0
    padded = [s for p in parts for s in p + [""] * (width - len(p))]
    return _strings(padded, (*x.shape, width)), counts.reshape(x.shape)


@op("RegexFullMatch", since=20)
def regex_full_match(x, *, pattern=""):
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise AclError(ErrorCode.INVALID_PARAM, f"RegexFullMatch: bad pattern {pattern!r}: {exc}") from None
    hits = [rx.fullmatch(str(s)) is not None for s in x.reshape(-1)]
    return np.array(hits, dtype=bool).reshape(x.shape)


def _ngram_pools(pool, ngram_counts, min_n, max_n):
    """{n: (first output slot, pool n-grams as an (P, n) array)} for each gram length in range."""
    starts = list(ngram_counts) + [len(pool)]
    pools, slot = {}, 0
    for level in range(len(ngram_counts)):
        n = level + 1
        grams = np.asarray(pool[starts[level]:starts[level + 1]])
        if len(grams) % n:
            raise AclError(ErrorCode.INVALID_PARAM, f"TfIdfVectorizer: pool of {n}-grams has {len(grams)} items")
        grams = grams.reshape(-1, n)
        if min_n <= n <= max_n:
            pools[n] = (slot, grams)
        slot += len(grams)
    return pools


def _count_ngrams(rows, n, grams, max_skip):
    """Counts of each pool n-gram in each row, over every skip distance 0..max_skip."""
    counts = np.zeros((rows.shape[0], len(grams)), dtype=np.int64)
    length = rows.shape[1]
    for step in range(1, (max_skip + 2) if n > 1 else 2):
        span = (n - 1) * step
        if span >= length:
            break
        idx = np.arange(length - span)[:, None] + step * np.arange(n)
        windows = rows[:, idx]
        match = np.all(windows[:, :, None, :] == grams[None, None], axis=-1)
        counts += match.sum(axis=1)
    return counts


@op("TfIdfVectorizer", since=9)
def tfidf_vectorizer(x, *, max_gram_length=None, max_skip_count=None, min_gram_length=None, mode=None,
                     ngram_counts=None, ngram_indexes=None, pool_int64s=None, pool_strings=None, weights=None):
    if (pool_int64s is None) == (pool_strings is None):
        raise AclError(ErrorCode.INVALID_PARAM, "TfIdfVectorizer: set exactly one of pool_int64s, pool_strings")
    pool = pool_strings if pool_strings is not None else np.asarray(pool_int64s, dtype=np.int64)
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    rows = rows.astype(object if pool_strings is not None else np.int64)
    indexes = np.asarray(ngram_indexes, dtype=np.int64)
    out = np.zeros((rows.shape[0], int(indexes.max()) + 1 if indexes.size else 0), dtype=np.float32)
    scale = np.ones(len(indexes), np.float32) if weights is None else np.asarray(weights, np.float32)
    for n, (slot, grams) in _ngram_pools(pool, ngram_counts, min_gram_length, max_gram_length).items():
        counts = _count_ngrams(rows, n, grams, max_skip_count).astype(np.float32)
        targets = indexes[slot:slot + len(grams)]
        if mode == "IDF":
            counts = np.minimum(counts, 1) * scale[slot:slot + len(grams)]
        elif mode == "TFIDF":
            counts = counts * scale[slot:slot + len(grams)]
        elif mode != "TF":
            raise AclError(ErrorCode.INVALID_PARAM, f"TfIdfVectorizer: unknown mode '{mode}'")
        np.add.at(out, (slice(None), targets), counts)
    return out[0] if x.ndim == 1 else out
