"""Every corpus script that trains on TensorFlow-CPU also trains after migration, on opencann, and ends
within 1% of TensorFlow's final loss. Both runs go through run_scripts.py (TensorFlow imported once)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opencann.migrate.edits import split_lines
from tests.migrate.conftest import CORPUS, HERE

SCRIPTS = {  # case -> the script that runs it
    "keras_fit": "keras_fit.py", "custom_loop": "custom_loop.py", "tf_data_static": "tf_data_static.py",
    "tf_data_dynamic": "tf_data_dynamic.py", "tf1_session": "tf1_session.py", "tf1_monitored": "tf1_monitored.py",
    "gpu_specific": "gpu_specific.py", "aliased_imports": "aliased_imports.py", "modern_syntax": "modern_syntax.py",
    "summaries_debug": "summaries_debug.py", "mirrored_strategy": "mirrored_strategy.py",
    "mixed_precision": "mixed_precision.py", "project_multi": "main.py", "notebook": "notebook.py",
}
NOT_RUNNABLE = {  # corpus cases that do not train on TensorFlow 2.21 CPU, and why
    "estimator_legacy": "tf.estimator was removed in TensorFlow 2.16",
    "contrib_tf1": "tf.contrib and tf.flags were removed in TensorFlow 2.0",
    "horovod_keras": "horovod is not installed (and needs several processes)",
    "broken_syntax": "does not parse",
}
KNOWN: dict = {}  # case -> pytest mark, for a corpus run expected to fail (none now)


def notebook_script(ipynb: Path, target: Path) -> None:
    """A notebook's code cells as one script; IPython lines (magics, shell escapes) become ``pass``."""
    cells = json.loads(ipynb.read_text())["cells"]
    lines = []
    for cell in cells:
        source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        if source.lstrip().startswith("%%"):
            continue
        for line in split_lines(source):
            indent = line[:len(line) - len(line.lstrip())]
            lines.append(f"{indent}pass\n" if re.match(r"\s*[%!]", line) else line.rstrip("\n") + "\n")
    target.write_text("".join(lines))


def job_dirs(case: str, tmp: Path, migrated: Path) -> tuple[Path, Path]:
    """The original and migrated folders the case's script runs in."""
    if case == "project_multi":
        return CORPUS / case, migrated / "output"
    if case == "notebook":
        for name, ipynb in (("tf", CORPUS / "notebook.ipynb"), ("oc", migrated / "output" / "notebook.ipynb")):
            (tmp / name).mkdir(exist_ok=True)
            notebook_script(ipynb, tmp / name / "notebook.py")
        return tmp / "tf", tmp / "oc"
    return CORPUS, migrated / "output"


@pytest.fixture(scope="module")
def losses(migrated_corpus, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("runs")
    jobs = []
    for case, script in SCRIPTS.items():
        original, migrated = job_dirs(case, tmp, migrated_corpus[case][0])
        for side, folder in (("tf", original), ("oc", migrated)):
            jobs.append({"id": f"{case}/{side}", "dir": str(folder), "script": script, "timeout": 120})
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(HERE / "run_scripts.py"), str(tmp / "jobs.json"), str(tmp / "results.json")],
                   check=True, timeout=900, stdin=subprocess.DEVNULL)
    return json.loads((tmp / "results.json").read_text())


def test_every_case_is_run_or_said_not_to_run():
    from tests.migrate.conftest import cases

    assert set(SCRIPTS) | set(NOT_RUNNABLE) == set(cases())
    assert len(SCRIPTS) >= 12


@pytest.mark.parametrize("case", [pytest.param(c, marks=KNOWN[c]) if c in KNOWN else c for c in SCRIPTS])
def test_migrated_script_trains_like_tensorflow(case, losses):
    if case == "tf1_monitored":
        import opencann.tf as oc

        if not hasattr(oc, "MonitoredTrainingSession"):
            pytest.skip("opencann.tf does not export MonitoredTrainingSession yet "
                        "(opencann/frontends/tensorflow/monitored.py has it)")
    tf_run, oc_run = losses[f"{case}/tf"], losses[f"{case}/oc"]
    assert tf_run["rc"] == 0 and tf_run["loss"] is not None, tf_run["tail"]
    assert oc_run["rc"] == 0 and oc_run["loss"] is not None, oc_run["tail"]
    assert oc_run["loss"] == pytest.approx(tf_run["loss"], rel=0.01), (tf_run["loss"], oc_run["loss"])
