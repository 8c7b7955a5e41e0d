"""Files around the rewriter: encodings, syntax errors, notebooks, entry files and precision per project."""
from __future__ import annotations

import json
import os

from opencann.migrate.project import Options, decode, migrate_project, write_tree


def project(tmp_path, files: dict[str, bytes | str], **options):
    src = tmp_path / "src"
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    migration = migrate_project(src, Options(**options))
    out = tmp_path / "out"
    write_tree(migration, out)
    return migration, out


def by_path(migration):
    return {r.path: r for r in migration.results}


def test_encodings_round_trip_byte_for_byte(tmp_path):
    latin = "# -*- coding: latin-1 -*-\nimport tensorflow as tf\nname = 'café'\ns = tf.compat.v1.Session()\n"
    bom = "\ufeffimport tensorflow as tf\nx = 'ü'\n"
    migration, out = project(tmp_path, {"latin.py": latin.encode("latin-1"), "bom.py": bom.encode("utf-8"),
                                        "bad.py": b"x = '\xff\xfe'\n"}, main="latin.py")
    assert (out / "latin.py").read_bytes() == latin.replace(
        "import tensorflow as tf\n", "import tensorflow as tf\nimport opencann.tf as oc\n"
        "oc.enable(precision_mode=\"force_fp32\")\n").replace("tf.compat.v1.Session", "oc.Session").encode("latin-1")
    assert (out / "bom.py").read_bytes() == bom.encode("utf-8")
    results = by_path(migration)
    assert results["bad.py"].status == "failed" and results["bad.py"].findings[0].rule == "OC061"
    assert (out / "bad.py").read_bytes() == b"x = '\xff\xfe'\n"
    assert decode(b"\xef\xbb\xbfx = 1\n") == ("x = 1\n", "utf-8-sig")


def test_a_file_that_does_not_parse_is_reported_and_copied(tmp_path):
    src = "import tensorflow as tf\n\ndef f(:\n    pass\n"
    migration, out = project(tmp_path, {"broken.py": src, "notes.txt": "kept"})
    finding = by_path(migration)["broken.py"].findings[0]
    assert (finding.rule, finding.level, finding.line) == ("OC060", "error", 3)
    assert "does not parse" in finding.message
    assert (out / "broken.py").read_text() == src and (out / "notes.txt").read_text() == "kept"


def notebook(cells: list[str], **extra) -> str:
    def cell(src):
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                "source": src.splitlines(keepends=True)}
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]}] + [cell(c) for c in cells],
          "metadata": {"kernelspec": {"language": "python", "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5,
          **extra}
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def test_notebook_cells_migrate_as_one_module_and_report_per_cell(tmp_path):
    text = notebook(["%matplotlib inline\nimport tensorflow as tf", "!pip list\nx = 'ß'",
                     "%%bash\necho tf.compat.v1.Session()", "for d in range(2):\n    %time f()\n"
                     "s = tf.compat.v1.Session()\nprint(tf.config.list_physical_devices('GPU'))"])
    migration, out = project(tmp_path, {"nb.ipynb": text})
    result = by_path(migration)["nb.ipynb"]
    sources = ["".join(c["source"]) for c in json.loads((out / "nb.ipynb").read_text())["cells"]]
    assert sources[1] == "%matplotlib inline\nimport tensorflow as tf\nimport opencann.tf as oc\n" \
                         'oc.enable(precision_mode="force_fp32")'
    assert sources[2:4] == ["!pip list\nx = 'ß'", "%%bash\necho tf.compat.v1.Session()"]
    assert sources[4] == ("for d in range(2):\n    %time f()\ns = oc.Session()\n"
                          "# opencann OC022 (gpu-device-list): was tf.config.list_physical_devices('GPU')\nprint([])")
    where = {(f.path, f.line, f.rule) for f in result.findings if f.rule != "OC105"}
    assert where == {("nb.ipynb#cell2", 3, "OC001"), ("nb.ipynb#cell2", 3, "OC002"),
                     ("nb.ipynb#cell5", 3, "OC010"), ("nb.ipynb#cell5", 4, "OC022")}
    changed = json.loads((out / "nb.ipynb").read_text())
    original = json.loads(text)
    for a, b in zip(original["cells"], changed["cells"]):
        assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    assert (out / "nb.ipynb").read_text().replace("\n", "").startswith('{ "cells": [')


def test_unchanged_and_invalid_notebooks_are_copied_as_they_are(tmp_path):
    plain = notebook(["x = 1"]).replace("\n ", "\n    ")  # a layout no json.dumps setting reproduces
    migration, out = project(tmp_path, {"plain.ipynb": plain, "bad.ipynb": "{not json", "r.ipynb":
                                        notebook(["library(x)"], metadata={"kernelspec": {"language": "R"}})})
    results = by_path(migration)
    assert results["bad.ipynb"].findings[0].rule == "OC063"
    assert results["plain.ipynb"].status == results["r.ipynb"].status == "unchanged"
    for name, text in (("plain.ipynb", plain), ("bad.ipynb", "{not json")):
        assert (out / name).read_text() == text


def test_entry_files_and_precision_mode_follow_the_imports(tmp_path):
    files = {
        "train.py": "import tensorflow as tf\nfrom nets import model\n\nif __name__ == '__main__':\n    model.fit()\n",
        "nets/model.py": "import tensorflow as tf\nfrom nets.policy import setup\n\ndef fit():\n    pass\n",
        "nets/policy.py": "import tensorflow as tf\n\ndef setup():\n    tf.keras.mixed_precision.set_global_policy"
                          "('mixed_bfloat16')\n",
        "nets/__init__.py": "",
        "other.py": "import tensorflow as tf\ntf.keras.Sequential().fit()\n",
    }
    migration, out = project(tmp_path, files)
    entries = {r.path: r.entry for r in migration.results if r.entry}
    assert entries == {"train.py": "allow_mix_precision_bf16", "other.py": "force_fp32"}
    guard = "    oc.enable(precision_mode=\"allow_mix_precision_bf16\")\n    model.fit()"
    assert guard in (out / "train.py").read_text()
    assert "oc." not in (out / "nets/model.py").read_text()
    migration, out = project(tmp_path / "m", files, main="other.py")
    assert {r.path for r in migration.results if r.entry} == {"other.py"}


def test_links_are_copied_as_links(tmp_path):
    migration, out = project(tmp_path, {"lib/a.py": "x = 1\n", "train.py": "import tensorflow as tf\n"})
    (tmp_path / "src" / "lib_link").symlink_to("lib")
    (tmp_path / "src" / "a_link.py").symlink_to("lib/a.py")
    (tmp_path / "src" / "dangling").symlink_to("nowhere")
    migration = migrate_project(tmp_path / "src", Options())
    write_tree(migration, tmp_path / "out2")
    for name, target in (("lib_link", "lib"), ("a_link.py", "lib/a.py"), ("dangling", "nowhere")):
        assert (tmp_path / "out2" / name).is_symlink() and os.readlink(tmp_path / "out2" / name) == target
    assert {r.path: r.status for r in migration.results}["a_link.py"] == "copied"
