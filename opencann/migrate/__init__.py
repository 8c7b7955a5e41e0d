"""Model migration (the flow layer): ``opencann migrate`` rewrites TensorFlow training scripts to run on
opencann and reports what it could not migrate.

    from opencann.migrate import Options, migrate_project, write_tree
    migration = migrate_project(Path("project/"), Options(main="train.py"))
    write_tree(migration, Path("project_oc/"))

The pieces, in the order a file goes through them:

* :mod:`.project` — finds the files, decodes them, runs the two passes, writes the output tree;
  :mod:`.notebook` joins a notebook's code cells into one module and splits the edits back per cell.
* :mod:`.scan` — parses with LibCST (never imports or runs the script) and resolves every reference to
  a TensorFlow/Keras name through the imports (``QualifiedNameProvider``); :mod:`.resolve` canonicalises.
* :mod:`.rules` — the rule table (data); :mod:`.rewriter` applies it as exact span edits of the original
  text (:mod:`.edits`), so everything outside them stays byte for byte.
* :mod:`.analysis` — classifies every API reference with the measured API database (:mod:`.database`).
* :mod:`.report` and :mod:`.report_html` — migration_report.txt, changes.csv, api_analysis.csv,
  summary.json and report.html.
"""
from opencann.migrate.project import InputError, Migration, Options, migrate_project, write_tree

__all__ = ["InputError", "Migration", "Options", "migrate_project", "write_tree"]
