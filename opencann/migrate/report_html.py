"""report.html: one self-contained page (no network): the summary, API uses by category as a bar chart,
the findings, side-by-side diffs per file and a filterable API table.

The summary, chart, tables and diffs are plain HTML (readable without JavaScript); a small inline script
filters the API table by text and category. The filter can be preset from the address:
``report.html#category=unknown&q=keras``.
"""
from __future__ import annotations

import difflib
from html import escape

from opencann.migrate.edits import split_lines
from opencann.migrate.project import Migration
from opencann.migrate.report import CATEGORY_ORDER
from opencann.migrate.results import Section

COLORS = {"supported": "#2e7d32", "migrated": "#1565c0", "harmless": "#6d8f3a", "manual": "#c62828",
          "removed": "#8e24aa", "unknown": "#ef6c00"}
CONTEXT = 3
EOL = "\r\n"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 24px;
color:#1d2329}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.error b{color:#c62828}.warning b{color:#ef6c00}.info b{color:#1565c0}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#f6f8fa;position:sticky;top:0}
.lvl-error{color:#c62828;font-weight:600}.lvl-warning{color:#ef6c00;font-weight:600}.lvl-info{color:#1565c0}
.diff{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;table-layout:fixed}
.diff td{white-space:pre-wrap;word-break:break-all;border:0;padding:0 6px}.diff td.n{width:40px;color:#999;
text-align:right;user-select:none}.del{background:#fdecea}.add{background:#e6f4ea}.gap td{background:#f6f8fa;
color:#888}details{margin:6px 0}summary{cursor:pointer;font-weight:600}
.controls{display:flex;gap:8px;margin:8px 0}.controls input{flex:1;padding:4px}
"""

SCRIPT = """
(function(){
  var q=document.getElementById('api-filter'), c=document.getElementById('api-category'),
      rows=[].slice.call(document.querySelectorAll('#api-table tbody tr')), shown=document.getElementById('api-shown');
  function apply(){
    var text=q.value.toLowerCase(), cat=c.value, n=0;
    rows.forEach(function(r){
      var ok=(!cat||r.getAttribute('data-category')===cat)&&(!text||r.textContent.toLowerCase().indexOf(text)>=0);
      r.style.display=ok?'':'none'; if(ok) n++;
    });
    shown.textContent=n+' of '+rows.length+' API uses shown';
  }
  var params=new URLSearchParams(location.hash.slice(1));
  if(params.get('category')) c.value=params.get('category');
  if(params.get('q')) q.value=params.get('q');
  q.addEventListener('input',apply); c.addEventListener('change',apply); apply();
})();
"""


def html_report(migration: Migration, info: dict, categories: dict[str, str]) -> str:
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
        "<title>opencann migrate report</title><style>", STYLE, "</style></head><body>",
        _summary(info), _chart(info["api_uses"], categories), _findings(migration), _diffs(migration),
        _api_table(migration, categories), "<script>", SCRIPT, "</script></body></html>\n",
    ]
    return "".join(parts)


def _summary(info: dict) -> str:
    files, edits, levels = info["files"], info["edits"], info["findings"]
    cards = [("files", files["total"], f"{files['changed']} changed, {files['failed']} failed"),
             ("edits", edits["total"], f"{edits['INSERT']} insert, {edits['MODIFY']} modify, {edits['DELETE']} delete"),
             ("API uses", info["api_uses"]["total"], "referenced TF/Keras names")]
    cards += [(level, levels[level], "findings") for level in levels]
    html = ["<section id=\"summary\"><h1>opencann migrate report</h1>",
            f"<p class=\"meta\">Input <code>{escape(info['input'])}</code> &middot; output "
            f"<code>{escape(info['output'] or '(dry run)')}</code> &middot; entry files "
            + (", ".join(f"<code>{escape(p)}</code> ({escape(m)})" for p, m in info["entry_files"].items()) or "none")
            + f" &middot; exit code {info['exit_code']}</p>",
            "<div class=\"cards\">"]
    for name, value, note in cards:
        html.append(f"<div class=\"card {escape(name)}\" data-count=\"{value}\"><b>{value}</b>{escape(name)}"
                    f"<br><small>{escape(note)}</small></div>")
    html.append("</div></section>")
    return "".join(html)


def _chart(counts: dict, categories: dict[str, str]) -> str:
    """A horizontal bar chart of API uses by category, as inline SVG."""
    width, bar, gap, label = 720, 22, 8, 170
    peak = max([counts.get(c, 0) for c in CATEGORY_ORDER] + [1])
    rows = []
    for i, cat in enumerate(CATEGORY_ORDER):
        n = counts.get(cat, 0)
        y = i * (bar + gap)
        w = round((width - label - 60) * n / peak)
        rows.append(f"<g class=\"bar\" data-category=\"{cat}\"><title>{escape(categories.get(cat, cat))}</title>"
                    f"<text x=\"0\" y=\"{y + 16}\">{cat}</text>"
                    f"<rect x=\"{label}\" y=\"{y}\" width=\"{w}\" height=\"{bar}\" fill=\"{COLORS[cat]}\"></rect>"
                    f"<text x=\"{label + w + 6}\" y=\"{y + 16}\">{n}</text></g>")
    height = len(CATEGORY_ORDER) * (bar + gap)
    return (f"<section id=\"chart\"><h2>API uses by category</h2><svg role=\"img\" width=\"{width}\" "
            f"height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-size=\"13\">{''.join(rows)}</svg></section>")


def _findings(migration: Migration) -> str:
    rows = []
    for f in sorted(migration.findings, key=lambda f: (f.path, f.line, f.col, f.rule)):
        rows.append(f"<tr><td><code>{escape(f.path)}:{f.line}:{f.col}</code></td>"
                    f"<td class=\"lvl-{f.level}\">{f.level.upper()}</td><td>{f.rule}</td>"
                    f"<td>{escape(f.message)}</td></tr>")
    return ("<section id=\"findings\"><h2>Findings</h2><table><thead><tr><th>where</th><th>level</th><th>rule</th>"
            f"<th>message</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _diffs(migration: Migration) -> str:
    blocks = []
    for result in migration.results:
        for section in result.sections:
            if section.changes:
                rules = sorted({r for c in section.changes for r in c.rules})
                blocks.append(f"<details open><summary>{escape(section.path)} &mdash; {len(section.changes)} "
                              f"changes ({', '.join(rules)})</summary>{_side_by_side(section)}</details>")
    body = "".join(blocks) or "<p>No file was changed.</p>"
    return f"<section id=\"diffs\"><h2>Changes</h2>{body}</section>"


def _side_by_side(section: Section) -> str:
    old, new = split_lines(section.original), split_lines(section.migrated)
    rows = ["<table class=\"diff\"><colgroup><col style=\"width:40px\"><col><col style=\"width:40px\"><col>"
            "</colgroup><tbody>"]
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for group in matcher.get_grouped_opcodes(CONTEXT):
        first = group[0]
        rows.append(f"<tr class=\"gap\"><td colspan=\"4\">@@ line {first[1] + 1} @@</td></tr>")
        for tag, i1, i2, j1, j2 in group:
            for k in range(max(i2 - i1, j2 - j1)):
                left = old[i1 + k] if i1 + k < i2 else None
                right = new[j1 + k] if j1 + k < j2 else None
                rows.append(_diff_row(tag, i1 + k + 1, left, j1 + k + 1, right))
    rows.append("</tbody></table>")
    return "".join(rows)


def _diff_row(tag: str, ln: int, left: str | None, rn: int, right: str | None) -> str:
    lcls = "" if tag == "equal" else " class=\"del\""
    rcls = "" if tag == "equal" else " class=\"add\""
    lcell = f"<td class=\"n\">{ln}</td><td{lcls}>{escape(left.rstrip(EOL))}</td>" if left is not None \
        else "<td class=\"n\"></td><td></td>"
    rcell = f"<td class=\"n\">{rn}</td><td{rcls}>{escape(right.rstrip(EOL))}</td>" if right is not None \
        else "<td class=\"n\"></td><td></td>"
    return f"<tr>{lcell}{rcell}</tr>"


def _api_table(migration: Migration, categories: dict[str, str]) -> str:
    options = "".join(f"<option value=\"{c}\">{escape(categories.get(c, c))}</option>" for c in CATEGORY_ORDER)
    rows = []
    for u in migration.api_uses:
        rows.append(f"<tr data-category=\"{u.category}\"><td><code>{escape(u.path)}:{u.line}</code></td>"
                    f"<td>{escape(u.module)}</td><td><code>{escape(u.api)}</code></td>"
                    f"<td style=\"color:{COLORS.get(u.category, '#333')}\">{u.category}</td>"
                    f"<td>{escape(u.note)}</td></tr>")
    total = len(rows)
    return ("<section id=\"apis\"><h2>API analysis</h2><div class=\"controls\">"
            "<input id=\"api-filter\" type=\"search\" placeholder=\"filter: file, module, API, note\">"
            f"<select id=\"api-category\"><option value=\"\">all categories</option>{options}</select>"
            f"<span id=\"api-shown\">{total} API uses</span></div>"
            "<table id=\"api-table\"><thead><tr><th>where</th><th>module</th><th>API</th><th>category</th>"
            f"<th>note</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")
