"""Generate the API support database of ``opencann migrate`` (``opencann/migrate/api_db.json``) by measuring.

Every TensorFlow/Keras API listed in ``tools/api_probes.py`` has a *probe*: a tiny program that uses it on
small inputs, either inside ``tf.function`` (TF2: run by TensorFlow, then again under ``opencann.tf.enable()``)
or in a ``tf.compat.v1`` graph (run by ``tf.compat.v1.Session``, then by ``opencann.tf.Session``). The generator
records the op types the probe's graphs hold, which of them opencann's TF importer has no converter for
(``opencann.frontends.tensorflow.importer.CONVERTERS``), whether opencann compiled and ran it, and whether
its results match TensorFlow's. Differentiable probes run a ``GradientTape`` too, since training needs the
gradient; when only the gradient fails the note says so. ``name:variant`` probes measure the same API with
other arguments and land in the ``variants`` of ``name``.

What a probe cannot decide comes from the hand-written ``TABLE`` there (``migrated``: what the rewriter
changes, citing its rule ids; ``harmless``: logging, summaries, profiling; ``removed``: ``tf.estimator``,
``tf.contrib`` and others gone from TF 2 / Keras 3, with the modern replacement — the generator checks which
still import; ``manual``: horovod and ``tf.distribute``, which need a collective-communication API opencann
does not have yet). A table entry also covers every name under it (a *family*). The links are found, not
written: aliases (``tf.exp`` is ``tf.math.exp``) by object identity over the public modules, ``tf.compat.v1``
twins of measured TF2 functions, and TF 1.x spellings that TF 2 no longer has (``tf.placeholder``).

    python tools/gen_api_db.py                  # measure everything, write the shipped JSON (~2 min, 2 jobs)
    python tools/gen_api_db.py --only tensorflow.nn.relu keras.layers.Dense   # refresh these entries
    python tools/gen_api_db.py --only tensorflow.nn.relu --out /tmp/db.json   # a database of just these
    python tools/gen_api_db.py --list           # the API names it knows
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("AUTOGRAPH_VERBOSITY", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import opencann.frontends.tensorflow.ops  # noqa: E402,F401  (registers the converters)
import opencann.tf as oc  # noqa: E402
from opencann.errors import AclError, ErrorCode  # noqa: E402
from opencann.frontends.tensorflow import adapter as tf2_adapter  # noqa: E402
from opencann.frontends.tensorflow import tf1 as tf1_adapter  # noqa: E402
from opencann.frontends.tensorflow.importer import CONVERTERS, PASS_THROUGH  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_probes import PROBES, ROOT, SUGGESTIONS, TABLE, Probe, resolve  # noqa: E402

DB_PATH = ROOT / "opencann" / "migrate" / "api_db.json"
SCHEMA = 1
IGNORED_OPS = frozenset(PASS_THROUGH) | {"Placeholder"}  # graph inputs and no-ops need no converter
RTOL, ATOL = 2e-3, 2e-4

# =========================================================================================== measuring


def reset() -> None:
    """The same starting point for every run: fresh Keras names, seeded generators, float32 policy."""
    keras.backend.clear_session(free_memory=False)  # collecting garbage would dominate the run time
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)


def graph_op_types(g: Any) -> set[str]:
    """Op types of a graph and of every function in its library (calls of library functions by name, whose
    names TensorFlow generates, are left out: their bodies are counted)."""
    gd = g.as_graph_def()
    types = {n.op for n in gd.node}
    for fn in gd.library.function:
        types.update(n.op for n in fn.node_def)
    return types - {fn.signature.name for fn in gd.library.function}


@contextlib.contextmanager
def collecting_ops() -> Iterator[set[str]]:
    """Record the op types of every graph opencann imports (TF2 functions and TF1 session runs)."""
    seen: set[str] = set()
    compile_function, pruned_ops = tf2_adapter.compile_function, tf1_adapter.pruned_ops

    def compile_and_record(cf, *args, **kwargs):
        seen.update(graph_op_types(cf.graph))
        return compile_function(cf, *args, **kwargs)

    def prune_and_record(targets, fed):
        ops = pruned_ops(targets, fed)
        seen.update(o.type for o in ops)
        if ops:
            seen.update(graph_op_types(ops[0].graph) if ops[0].graph._functions else ())
        return ops

    tf2_adapter.compile_function, tf1_adapter.pruned_ops = compile_and_record, prune_and_record
    try:
        yield seen
    finally:
        tf2_adapter.compile_function, tf1_adapter.pruned_ops = compile_function, pruned_ops


def run_probe(p: Probe, on_opencann: bool, with_grad: bool) -> Any:
    reset()
    if not on_opencann or p.kind == "tf1":
        return p.make(with_grad)(on_opencann)
    oc.enable()
    try:
        return p.make(with_grad)(True)
    finally:
        oc.disable()


def _flat(value: Any) -> list:
    out = []
    for v in tf.nest.flatten(value, expand_composites=True):
        if v is None:
            continue
        out.append(v.numpy() if hasattr(v, "numpy") else np.asarray(v))
    return out


def compare(expected: Any, actual: Any, random: bool) -> tuple[str, str]:
    """("match" | "random" | "mismatch", detail)."""
    want, got = _flat(expected), _flat(actual)
    if len(want) != len(got):
        return "mismatch", f"{len(got)} outputs instead of {len(want)}"
    same_values = True
    for i, (w, g) in enumerate(zip(want, got)):
        if w.shape != g.shape or (w.dtype != g.dtype and not (w.dtype.kind == g.dtype.kind == "O")):
            return "mismatch", f"output {i}: {g.dtype}{list(g.shape)} instead of {w.dtype}{list(w.shape)}"
        if w.dtype.kind in "fc":
            scale = max(1.0, float(np.max(np.abs(w))) if w.size and np.all(np.isfinite(w)) else 1.0)
            ok = np.allclose(g, w, rtol=RTOL, atol=ATOL * scale, equal_nan=True)
        else:
            ok = np.array_equal(g, w)
        if not ok:
            same_values = False
            if not random:
                err = float(np.max(np.abs(g.astype("float64") - w.astype("float64")))) if w.dtype.kind in "fciub" \
                    else float("nan")
                return "mismatch", f"output {i}: max abs error {err:.2g}"
    return ("match" if same_values else "random"), ""


def _error_text(e: BaseException) -> str:
    """The error, without the source locations TensorFlow and opencann quote (they change with every edit)."""
    text = re.sub(r" \([^()]*:\d+\)", "", " ".join(str(e).split()))
    return f"{type(e).__name__}: {text[:400]}"


def measure(name: str) -> dict:
    """Run ``name``'s probe on TensorFlow and on opencann; what happened, as plain data."""
    p = PROBES[name]
    try:
        expected = run_probe(p, on_opencann=False, with_grad=p.grad)
    except Exception as e:  # noqa: BLE001  (a broken probe is reported, not fatal)
        return {"status": "probe-error", "detail": _error_text(e)}
    with collecting_ops() as seen:
        try:
            actual = run_probe(p, on_opencann=True, with_grad=p.grad)
            error = None
        except Exception as e:  # noqa: BLE001
            error = e
    result = {"ops": sorted(seen - IGNORED_OPS)}
    if error is None:
        numeric, detail = compare(expected, actual, p.random)
        status = "mismatch" if numeric == "mismatch" else ("host" if not seen else "ok")
        return result | {"status": status, "numeric": numeric, "detail": detail}
    missing = sorted(seen - set(CONVERTERS) - IGNORED_OPS)
    result |= {"detail": _error_text(error)}
    if not missing or not (isinstance(error, AclError) and error.code == ErrorCode.OP_NOT_FOUND):
        return result | {"status": "error"}
    result |= {"status": "missing", "missing_ops": missing}
    if p.grad:
        result["forward_ok"] = _forward_runs(p)
    return result


def _forward_runs(p: Probe) -> bool:
    try:
        run_probe(p, on_opencann=True, with_grad=False)
        return True
    except Exception:  # noqa: BLE001
        return False


def measure_all(names: list[str], jobs: int) -> dict[str, dict]:
    """Measurements of ``names``: isolated probes each in a fresh process, the rest in ``jobs`` processes (or in
    this one when ``jobs`` is 1)."""
    isolated = [n for n in names if PROBES[n].isolated]
    shared = [n for n in names if not PROBES[n].isolated]
    results: dict[str, dict] = {}
    if jobs <= 1:
        results.update(_measure_here(shared, len(names)))
    else:
        results.update(_measure_in_processes([shared[i::jobs] for i in range(jobs)]))
    if isolated:
        results.update(_measure_in_processes([[n] for n in isolated]))
    return results


PROBE_TIMEOUT_S = 120  # probes take a second or two: one that runs this long is stuck


def _measure_here(names: list[str], total: int | None = None, journal: Path | None = None) -> dict[str, dict]:
    """Measure in this process; with ``journal``, append each result to it as a JSON line as soon as it is known
    and end the process (printing every thread's stack) when a probe gets stuck."""
    results = {}
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        if journal:
            faulthandler.dump_traceback_later(PROBE_TIMEOUT_S, exit=True)
        results[name] = measure(name)
        if journal:
            faulthandler.cancel_dump_traceback_later()
            with open(journal, "a", encoding="utf-8") as f:
                f.write(json.dumps({name: results[name]}) + "\n")
        print(f"[{i:4}/{total or len(names)}] {name}: {results[name]['status']} "
              f"({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)
    return results


def _measure_in_processes(chunks: list[list[str]]) -> dict[str, dict]:
    """Each chunk in a worker process, all in parallel. A worker that dies (a probe crashed or got stuck) is
    restarted on the rest of its chunk; a probe that ends two workers in a row is recorded as an error."""
    results: dict[str, dict] = {}
    pending = [(chunk, None, 0) for chunk in chunks if chunk]  # (names, who ended the last worker, idle deaths)
    while pending:
        running = [(_start_worker(names), names, suspect, idle) for names, suspect, idle in pending]
        pending = []
        for (proc, journal), names, suspect, idle in running:
            proc.wait()
            lines = journal.read_text(encoding="utf-8").splitlines() if journal.exists() else []
            journal.unlink(missing_ok=True)
            for line in lines:
                results.update(json.loads(line))
            idle = 0 if lines else idle + 1
            if idle >= 3:
                raise RuntimeError(f"measuring workers die before measuring anything (exit {proc.returncode})")
            rest = [n for n in names if n not in results]
            if rest and rest[0] == suspect:
                results[suspect] = {"status": "error", "detail": f"ProcessError: measuring it ended the process "
                                    f"twice (exit {proc.returncode}: crashed, or stuck for {PROBE_TIMEOUT_S}s)"}
                rest = rest[1:]
            if rest:
                pending.append((rest, rest[0], idle))
    return results


def _start_worker(names: list[str]) -> tuple[Any, Path]:
    import subprocess

    fd, journal = tempfile.mkstemp(suffix=".jsonl", prefix="gen_api_db_")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", *names, "--out", journal]
    return subprocess.Popen(cmd), Path(journal)

# ========================================================================================= classifying


DEBUG_OPS = frozenset({"Assert", "CheckNumerics", "CheckNumericsV2", "PrintV2", "StringFormat"})


def suggestion_for(name: str, missing: list[str]) -> str:
    if missing and set(missing) <= DEBUG_OPS and not name.startswith(("tensorflow.debugging", "tensorflow.print",
                                                                       "tensorflow.Assert")):
        return ("It only fails on the runtime checks it inserts (Assert/CheckNumerics ops, which opencann cannot "
                "convert yet): call it outside the tf.function, or restate it without the checks")
    prefix = max((k for k in SUGGESTIONS if name == k or name.startswith(k)), key=len)
    return SUGGESTIONS[prefix]


def measured_entry(name: str, m: dict) -> dict:
    """The database entry of a measured API."""
    status = m["status"]
    entry = {"evidence": "measured", "ops": m.get("ops", [])}
    if status in ("ok", "host"):
        how = {"match": "results match TensorFlow", "random": "random values: shapes and dtypes match TensorFlow"}
        note = ("runs on the host under TensorFlow; nothing to run on opencann" if status == "host" else
                f"runs on opencann; {how[m['numeric']]}")
        extra = PROBES[name].note if name in PROBES else ""
        return entry | {"category": "supported", "note": f"{note}; {extra}" if extra else note, "suggestion": "",
                        "numeric": m["numeric"]}
    entry |= {"category": "manual", "suggestion": suggestion_for(name, m.get("missing_ops", [])),
              "detail": m.get("detail", "")}
    if status == "missing":
        ops = ", ".join(m["missing_ops"])
        note = (f"the forward pass runs on opencann but its gradient needs op(s) opencann has no converter for: {ops}"
                if m.get("forward_ok") else f"opencann has no converter for TensorFlow op(s): {ops}")
        return entry | {"note": note, "missing_ops": m["missing_ops"]}
    if status == "mismatch":
        return entry | {"note": f"runs on opencann but its results differ from TensorFlow's (rtol {RTOL})",
                        "numeric": "mismatch"}
    if status == "probe-error":
        raise RuntimeError(f"the probe of {name} fails under TensorFlow itself: {m['detail']}")
    kind = m["detail"].split(":", 1)[0]
    return entry | {"note": f"opencann imports every op type but fails to compile or run it ({kind})"}


def table_entry(name: str, spec: tuple[str, str, str]) -> dict:
    category, note, suggestion = spec
    entry = {"evidence": "table", "category": category, "note": note, "suggestion": suggestion}
    try:
        resolve(name)
        entry["present"] = True
    except Exception:  # noqa: BLE001  (absent from this TensorFlow/Keras)
        entry["present"] = False
    if category == "removed":
        versions = f"TensorFlow {tf.__version__} / Keras {keras.__version__}"
        entry["note"] += f" (still importable in {versions}, deprecated)" if entry["present"] else \
            f" (absent from {versions})"
    return entry


def entry_for(name: str, m: dict | None) -> dict:
    """Table knowledge wins on category (the rewriter or the platform decides it); measurements are kept."""
    if name in TABLE:
        entry = table_entry(name, TABLE[name])
        if m is not None:
            measured = measured_entry(name, m)
            entry |= {"evidence": "table+measured", "ops": measured["ops"],
                      "measured": {"category": measured["category"], "note": measured["note"]}}
        return entry
    return measured_entry(name, m)


def merge_variants(entries: dict[str, dict]) -> dict[str, dict]:
    """``name:variant`` probes become ``variants`` of ``name``; unsupported ones are named in its note."""
    out = {k: v for k, v in entries.items() if ":" not in k}
    for key in sorted(k for k in entries if ":" in k):
        base, variant = key.split(":", 1)
        entry = entries[key]
        target = out.setdefault(base, dict(entry) | {"note": "measured through its variants"})
        target.setdefault("variants", {})[variant] = {k: entry[k] for k in ("category", "note") if k in entry}
        if entry["category"] != "supported":
            target["note"] += f"; variant '{variant}' needs manual migration: {entry['note']}"
    return out


ALIAS_MODULES = (
    "tensorflow", "tensorflow.math", "tensorflow.nn", "tensorflow.linalg", "tensorflow.random", "tensorflow.image",
    "tensorflow.bitwise", "tensorflow.debugging", "tensorflow.data", "tensorflow.io", "tensorflow.signal",
    "tensorflow.sparse", "tensorflow.strings", "tensorflow.train", "tensorflow.config", "tensorflow.dtypes",
    "tensorflow.compat.v1", "tensorflow.compat.v1.math", "tensorflow.compat.v1.nn", "tensorflow.compat.v1.linalg",
    "tensorflow.compat.v1.random", "tensorflow.compat.v1.image", "tensorflow.compat.v1.train",
    "tensorflow.compat.v1.losses", "tensorflow.compat.v1.initializers", "tensorflow.compat.v1.debugging",
    "tensorflow.compat.v1.data", "tensorflow.compat.v1.config", "tensorflow.compat.v1.io",
    "tensorflow.compat.v1.signal", "tensorflow.compat.v1.sparse", "tensorflow.compat.v1.strings",
    "keras", "keras.layers", "keras.activations", "keras.losses", "keras.metrics", "keras.optimizers",
    "keras.optimizers.schedules", "keras.initializers", "keras.regularizers", "keras.callbacks", "keras.models",
    "keras.ops", "keras.utils", "keras.mixed_precision", "keras.backend",
)


def find_aliases(names: set[str]) -> dict[str, str]:
    """Public names bound to the same object as a database entry (``tensorflow.exp`` -> ``tensorflow.math.exp``)."""
    by_id: dict[int, str] = {}
    for name in sorted(names):
        try:
            obj = resolve(name)
        except Exception:  # noqa: BLE001
            continue
        if callable(obj) and not inspect.ismodule(obj):
            by_id.setdefault(id(obj), name)
    aliases = {}
    for module_name in ALIAS_MODULES:
        module = resolve(module_name)
        for attr in sorted(dir(module)):
            alias = f"{module_name}.{attr}"
            if attr.startswith("_") or alias in names:
                continue
            try:
                canonical = by_id.get(id(getattr(module, attr)))
            except Exception:  # noqa: BLE001  (names that exist only with Keras 2 raise)
                continue
            if canonical:
                aliases[alias] = canonical
    return aliases


def find_v1_counterparts(names: set[str], aliases: dict[str, str]) -> dict[str, str]:
    """``tensorflow.compat.v1.X`` -> ``tensorflow.X`` where the compat.v1 twin exists as a different object (the
    TF1 signature of the same ops, e.g. ``reduce_sum(keep_dims=...)``) and has no entry of its own."""
    out = {}
    for name in sorted(names):
        if not name.startswith("tensorflow.") or name.startswith("tensorflow.compat."):
            continue
        twin = "tensorflow.compat.v1." + name.removeprefix("tensorflow.")
        if twin in names or twin in aliases:
            continue
        try:
            resolve(twin)
        except Exception:  # noqa: BLE001  (no compat.v1 twin)
            continue
        out[twin] = name
    return out


TF1_MODULES = ("", "train", "nn", "losses", "metrics", "summary", "image", "math", "random", "initializers", "data",
               "io", "linalg", "logging", "saved_model", "sparse", "strings", "errors", "debugging", "config", "test",
               "lookup", "distribute", "quantization", "sets", "signal", "bitwise", "dtypes", "autograph")


def find_tf1_names() -> dict[str, str]:
    """TF 1.x spellings gone from TF 2 (``tensorflow.placeholder``) -> their ``tensorflow.compat.v1`` name."""
    out = {}
    for sub in TF1_MODULES:
        v1_name, v2_name = ".".join(filter(None, ("tensorflow.compat.v1", sub))), ".".join(filter(None, ("tensorflow",
                                                                                                       sub)))
        try:
            v1, v2 = resolve(v1_name), resolve(v2_name)
        except AttributeError:
            continue
        for attr in sorted(dir(v1)):
            if attr.startswith("_") or attr in ("compat", "estimator", "keras"):
                continue
            try:
                getattr(v2, attr)
            except AttributeError:
                out[f"{v2_name}.{attr}"] = f"{v1_name}.{attr}"
    return out


def expand_variants(names: list[str]) -> list[str]:
    """``names`` plus every probe sharing a base name with one of them (a base entry merges its variants)."""
    bases = {n.split(":")[0] for n in names}
    return sorted(n for n in PROBES if n.split(":")[0] in bases)


def build_entries(measurements: dict[str, dict], names: list[str]) -> dict[str, dict]:
    entries = {name: entry_for(name, measurements.get(name)) for name in names}
    return merge_variants(entries)


def build_database(measurements: dict[str, dict]) -> dict:
    names = sorted(set(PROBES) | set(TABLE))
    return complete({"apis": build_entries(measurements, names)})


def complete(db: dict) -> dict:
    """``db`` with everything derived from its entries: versions, counts, families and the links."""
    names = set(db["apis"])
    aliases = find_aliases(names)
    counts: dict[str, int] = {}
    for entry in db["apis"].values():
        counts[entry["category"]] = counts.get(entry["category"], 0) + 1
    return db | {
        "schema": SCHEMA,
        "generated_by": "tools/gen_api_db.py",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "counts": dict(sorted(counts.items())),
        "families": sorted(TABLE),
        "aliases": aliases,
        "v1_counterparts": find_v1_counterparts(names, aliases),
        "tf1_names": {k: v for k, v in find_tf1_names().items() if k not in names},
    }


def dump(db: dict) -> str:
    return json.dumps(db, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ================================================================================================= CLI


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(sorted(set(PROBES) | set(TABLE))))
        return 0
    if args.measure:  # a worker of _measure_in_processes
        _measure_here(args.measure, journal=args.out)
        return 0
    unknown = sorted(set(args.only or []) - set(PROBES) - set(TABLE))
    if unknown:
        parser.error(f"unknown API names (see --list): {', '.join(unknown)}")
    start = time.perf_counter()
    probed = expand_variants([n for n in args.only if n in PROBES]) if args.only else sorted(PROBES)
    if args.from_measurements:
        measurements = json.loads(args.from_measurements.read_text(encoding="utf-8"))
    else:
        measurements = measure_all(probed, args.jobs)
    if args.save_measurements:
        write_atomically(args.save_measurements, json.dumps(measurements, indent=1, sort_keys=True))
    db = _database(args.only, args.out, measurements, probed)
    out = args.out or DB_PATH
    write_atomically(out, dump(db))
    print(f"wrote {out}: {len(db['apis'])} APIs {db.get('counts', '')} in {time.perf_counter() - start:.0f}s",
          file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="API", help="rebuild only these entries (and their variants); "
                        "without --out they replace those of the shipped database")
    parser.add_argument("--out", type=Path, help=f"where to write (default {DB_PATH.relative_to(ROOT)})")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--list", action="store_true", help="print the API names and exit")
    parser.add_argument("--save-measurements", type=Path, metavar="JSON", help="also write the raw measurements")
    parser.add_argument("--from-measurements", type=Path, metavar="JSON",
                        help="classify saved measurements instead of measuring again")
    parser.add_argument("--measure", nargs="+", metavar="API", help=argparse.SUPPRESS)  # worker mode
    return parser


def _database(only: list[str] | None, out: Path | None, measurements: dict, probed: list[str]) -> dict:
    """The whole database, or with ``only``: those entries alone (``out`` given) or merged into the shipped one."""
    if not only:
        return build_database(measurements)
    entries = build_entries(measurements, probed + [n for n in only if n in TABLE and n not in PROBES])
    if out is not None:
        return {"schema": SCHEMA, "apis": entries}
    db = json.loads(DB_PATH.read_text(encoding="utf-8"))
    db["apis"].update(entries)
    return complete(db)


if __name__ == "__main__":
    sys.exit(main())
