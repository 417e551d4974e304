"""The review page: one self-contained HTML file (inline style and script, no network, no server) in which a
reviewer decides each sampled row and saves the decisions file that `pilot review import` (or `import-pairs`)
reads. Shared by the prompt review (review.py) and the pair review (pair_review.py); a `PageSpec` says what
differs between them.

What the page does: approve / reject (and, for pairs, flip and "judge wrong") each row by click or keyboard,
a note per row, the same for every row matching the filters (a whole stratum: confirmed first, saying how many
rows and whether a filter narrows them, and undoable); filters by the spec's columns, tags, stratum and
decision (picking one hands the keys back to the rows), a text search, sorting by any column; progress
(decided / sampled); pages of PAGE_ROWS rows, with the pager above and below them, so thousands of sampled rows
stay responsive; a flipped row's texts relabelled; decisions kept in the browser's localStorage as they are made
(a reload loses nothing) and saved as a CSV download with the export's columns.

Rows are data, never markup: they travel as JSON inside a non-executing script element (`<`, `>` and `&`
escaped, so a row cannot close it) and reach the document only through textContent.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from data_curation.review_file import FORMULA_START

PAGE_ROWS = 50


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "meta"  # meta: a short cell; num: sorted as a number; text: a long block below the row's cells


@dataclass(frozen=True)
class PageSpec:
    title: str
    intro: str  # plain text
    columns: tuple[Column, ...]
    filters: tuple[str, ...]  # columns with a drop-down filter
    tags: tuple[str, ...]  # of those, the ones holding comma-separated tags (a row matches any of its tags)
    decisions: tuple[str, ...]  # e.g. approve, reject (and flip); "" is undecided
    fields: tuple[str, ...]  # the saved file's columns, in order (the export's own)
    file_name: str  # the saved file's name
    storage_key: str  # where the browser keeps decisions between visits (the sample's identity)
    flags: tuple[str, ...] = ()  # yes/no marks a reviewer can set per row (saved as "yes" or "")
    flipped: tuple[tuple[str, str], ...] = ()  # (text column, its label while the row is decided "flip")


def _json_for_script(value) -> str:
    return (json.dumps(value, ensure_ascii=False).replace("&", "\\u0026").replace("<", "\\u003c")
            .replace(">", "\\u003e"))


def render_page(spec: PageSpec, rows: list[dict]) -> str:
    data = {"columns": [c.__dict__ for c in spec.columns], "filters": list(spec.filters), "tags": list(spec.tags),
            "decisions": list(spec.decisions), "flags": list(spec.flags), "fields": list(spec.fields),
            "flipped": dict(spec.flipped),
            "file": spec.file_name, "storage": spec.storage_key, "pageRows": PAGE_ROWS, "rows": rows,
            "formulaStart": list(FORMULA_START)}
    keys = ["<kbd>j</kbd>/<kbd>k</kbd> next/previous row", "<kbd>[</kbd>/<kbd>]</kbd> page"]
    keys += [f"<kbd>{d[0]}</kbd> {d}" for d in spec.decisions]
    keys += [f"<kbd>{'w' if f == 'judge_wrong' else f[0]}</kbd> {f.replace('_', ' ')}" for f in spec.flags]
    keys += ["<kbd>u</kbd> undecide", "<kbd>n</kbd> note", "<kbd>Esc</kbd> leave the note"]
    return (_PAGE.replace("{{TITLE}}", html.escape(spec.title)).replace("{{INTRO}}", html.escape(spec.intro))
            .replace("{{KEYS}}", ", ".join(keys)).replace("{{FILE}}", html.escape(spec.file_name))
            .replace("{{DATA}}", _json_for_script(data)))


_PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>Review: {{TITLE}}</title>
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.bar { display: flex; flex-wrap: wrap; gap: .5em; align-items: center; margin: .5em 0; }
.bar label { font-size: .9em; }
#progress { font-weight: 600; margin-left: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; font-size: .9em; }
th { background: #eee; cursor: pointer; user-select: none; white-space: nowrap; }
th.asc::after { content: " \25B2"; } th.desc::after { content: " \25BC"; }
tbody.item { border-top: 3px solid #999; }
tbody.item.cursor td { background: #fff8d8; }
td.decision { white-space: nowrap; }
tbody.item.d-approve td.decision { background: #d7f5dd; }
tbody.item.d-reject td.decision { background: #f9d6d5; }
tbody.item.d-flip td.decision { background: #dde6fb; }
td.texts { padding: 0; border-top: none; }
.grid { display: grid; grid-auto-flow: column; grid-auto-columns: 1fr; gap: 1px; background: #ddd; }
.block { background: #fff; padding: 4px 8px; white-space: pre-wrap; max-height: 16em; overflow: auto; }
.block b { display: block; font-size: .8em; color: #666; }
button.on { font-weight: 700; outline: 2px solid #333; }
input.note { width: 12em; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 3px; font-size: .85em; }
.help { color: #555; font-size: .85em; }
#confirm { background: #fff3cd; border: 1px solid #e0c36a; padding: 4px 8px; }
#confirm[hidden] { display: none; }
</style></head><body>
<h1>Review: {{TITLE}}</h1>
<p>{{INTRO}}</p>
<p class="help">Keys: {{KEYS}}. Decisions are kept in this browser as you go; <b>Save</b> writes
<code>{{FILE}}</code> to import as above.</p>
<div class="bar" id="filters">
  <input id="search" type="search" placeholder="search the text" size="28">
  <label>decision <select id="filter-decision"></select></label>
</div>
<div class="bar">
  <span id="actions"></span>
  <button id="undo" disabled>undo</button>
  <button id="save">Save {{FILE}}</button>
  <span id="progress"></span>
</div>
<div class="bar" id="confirm" hidden><span id="confirm-text"></span>
<button id="confirm-yes">yes</button><button id="confirm-no">cancel</button></div>
<div class="bar"><button id="prev-top" class="prev">&larr; previous</button><span id="page-info-top"
class="page-info"></span><button id="next-top" class="next">next &rarr;</button></div>
<table id="rows"><thead><tr id="head"></tr></thead></table>
<div class="bar"><button id="prev" class="prev">&larr; previous</button><span id="page-info"
class="page-info"></span><button id="next" class="next">next &rarr;</button></div>
<script id="data" type="application/json">{{DATA}}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const rows = D.rows, table = document.getElementById("rows");
const metaCols = D.columns.filter(c => c.kind !== "text"), textCols = D.columns.filter(c => c.kind === "text");
const el = (tag, props, ...kids) => { const e = document.createElement(tag); Object.assign(e, props || {});
  kids.forEach(k => e.append(k)); return e; };
rows.forEach(r => { r.decision = r.decision || ""; r.note = r.note || "";
                    D.flags.forEach(f => r[f] = r[f] === true || r[f] === "yes" ? "yes" : ""); });

// decisions made earlier in this browser for the same sample
try {
  const kept = JSON.parse(localStorage.getItem(D.storage) || "{}");
  rows.forEach(r => { const k = kept[r.id]; if (k) Object.assign(r, k); });
} catch (e) { /* storage unavailable: decisions live in the page until saved */ }
function remember() {
  const kept = {};
  rows.forEach(r => { if (r.decision || r.note || D.flags.some(f => r[f]))
    kept[r.id] = Object.fromEntries(["decision", "note", ...D.flags].map(k => [k, r[k]])); });
  try { localStorage.setItem(D.storage, JSON.stringify(kept)); } catch (e) {}
}

// filters
const filters = {};
const tagsOf = (r, c) => D.tags.includes(c) ? String(r[c] || "").split(",").filter(Boolean) : [String(r[c] ?? "")];
D.filters.forEach(c => {
  const values = [...new Set(rows.flatMap(r => tagsOf(r, c)))].sort();
  const label = (D.columns.find(x => x.key === c) || {label: c}).label;
  const sel = el("select", {id: "filter-" + c}, el("option", {value: "*", textContent: "all"}));
  values.forEach(v => sel.append(el("option", {value: v, textContent: v === "" ? "(none)" : v})));
  sel.addEventListener("change", () => { filters[c] = sel.value; refresh(true); sel.blur(); });  // keys: the rows
  document.getElementById("filters").append(el("label", {}, label + " ", sel));
});
const decSel = document.getElementById("filter-decision");
[["*", "all"], ["", "undecided"], ...D.decisions.map(d => [d, d]),
 ...D.flags.map(f => ["flag:" + f, f.replace("_", " ")])]
  .forEach(([v, t]) => decSel.append(el("option", {value: v, textContent: t})));
decSel.addEventListener("change", () => { refresh(true); decSel.blur(); });
const search = document.getElementById("search");
search.addEventListener("input", () => refresh(true));

function matches(r) {
  for (const c in filters) if (filters[c] !== "*" && !tagsOf(r, c).includes(filters[c])) return false;
  const d = decSel.value;
  if (d.startsWith("flag:") ? !r[d.slice(5)] : d !== "*" && r.decision !== d) return false;
  const q = search.value.trim().toLowerCase();
  return !q || D.columns.some(c => String(r[c.key] ?? "").toLowerCase().includes(q));
}

// sorting
let sortKey = null, asc = true;
const head = document.getElementById("head");
metaCols.forEach(c => { const th = el("th", {textContent: c.label}); th.dataset.key = c.key;
  th.addEventListener("click", () => { asc = sortKey === c.key ? !asc : true; sortKey = c.key; refresh(false); });
  head.append(th); });
["decision", ...D.flags, "note"].forEach(k => head.append(el("th", {textContent: k.replace("_", " ")})));
function sortKeyOf(r) {
  const t = String(r[sortKey] ?? "").trim(), n = parseFloat(t);
  return t !== "" && !isNaN(n) && isFinite(t) ? n : t.toLowerCase();
}
function compare(a, b) {
  const x = sortKeyOf(a), y = sortKeyOf(b);
  if ((x === "") !== (y === "")) return x === "" ? 1 : -1;  // empty cells last, either way
  const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
  return asc ? c : -c;
}

// the view: filtered and sorted rows, a page of them in the table, a cursor for the keyboard
let view = [], page = 0, cursor = 0;
function refresh(toFirst) {
  view = rows.filter(matches);
  if (sortKey) view.sort(compare);
  head.querySelectorAll("th").forEach(th => th.classList.remove("asc", "desc"));
  if (sortKey) head.querySelector(`th[data-key="${CSS.escape(sortKey)}"]`).classList.add(asc ? "asc" : "desc");
  if (toFirst) { page = 0; cursor = 0; }
  cursor = Math.min(cursor, Math.max(view.length - 1, 0));
  page = Math.min(page, Math.max(Math.ceil(view.length / D.pageRows) - 1, 0));
  render();
}
function decide(r, d) { r.decision = d; remember(); }
function render() {
  table.querySelectorAll("tbody").forEach(b => b.remove());
  const first = page * D.pageRows;
  view.slice(first, first + D.pageRows).forEach((r, i) => table.append(item(r, first + i)));
  const pages = Math.max(Math.ceil(view.length / D.pageRows), 1);
  document.querySelectorAll(".page-info").forEach(p => p.textContent =
    `page ${page + 1} of ${pages} (${view.length} matching)`);
  const decided = rows.filter(r => r.decision).length;
  document.getElementById("progress").textContent = `decided ${decided} / ${rows.length} sampled`;
}
function item(r, at) {
  const body = el("tbody", {className: "item" + (r.decision ? " d-" + r.decision : "")
                                    + (at === cursor ? " cursor" : "")});
  body.dataset.id = r.id;
  const tr = el("tr");
  metaCols.forEach(c => { const td = el("td", {textContent: String(r[c.key] ?? "")}); td.dataset.key = c.key;
                          tr.append(td); });
  const dec = el("td", {className: "decision"});
  D.decisions.forEach(d => { const b = el("button", {textContent: d, className: r.decision === d ? "on" : ""});
    b.dataset.decision = d;
    b.addEventListener("click", () => { cursor = at; decide(r, r.decision === d ? "" : d); render(); });
    dec.append(b); });
  tr.append(dec);
  D.flags.forEach(f => { const box = el("input", {type: "checkbox", checked: !!r[f]}); box.dataset.flag = f;
    box.addEventListener("change", () => { cursor = at; r[f] = box.checked ? "yes" : ""; remember(); render(); });
    tr.append(el("td", {}, box)); });
  const note = el("input", {className: "note", value: r.note, placeholder: "note"});
  note.addEventListener("input", () => { r.note = note.value; remember(); });
  note.addEventListener("focus", () => { cursor = at; });
  tr.append(el("td", {}, note));
  tr.addEventListener("click", e => { if (e.target === tr || e.target.tagName === "TD") { cursor = at; render(); } });
  body.append(tr);
  if (textCols.length) {
    const grid = el("div", {className: "grid"});
    textCols.forEach(c => { const label = r.decision === "flip" && D.flipped[c.key] || c.label;
      const b = el("div", {className: "block"}, el("b", {textContent: label}), String(r[c.key] ?? ""));
      b.dataset.key = c.key; grid.append(b); });
    body.append(el("tr", {}, el("td", {className: "texts", colSpan: metaCols.length + D.flags.length + 2}, grid)));
  }
  return body;
}

// actions on every matching row (a whole stratum: filter to it first), confirmed first and undoable
const actions = document.getElementById("actions"), undone = [], undoBtn = document.getElementById("undo");
const confirmBar = document.getElementById("confirm");
let pending = null;
const narrowed = () => Object.values(filters).some(v => v !== "*") || decSel.value !== "*" || search.value.trim();
[...D.decisions, ""].forEach(d => { const b = el("button", {textContent: (d || "undecide") + " all matching"});
  b.id = "all-" + (d || "undecide");
  b.addEventListener("click", () => {
    pending = {d, rows: view.slice()};
    document.getElementById("confirm-text").textContent = `${d || "undecide"} all ${pending.rows.length} ` +
      `matching rows` + (narrowed() ? "?" : ` (no filter: every row of the sample)?`);
    confirmBar.hidden = false; document.getElementById("confirm-yes").focus(); });
  actions.append(b); });
function answer(yes) {
  if (yes && pending) {
    undone.push({what: `${pending.d || "undecide"} ${pending.rows.length} rows`,
                 was: pending.rows.map(r => [r, r.decision])});
    pending.rows.forEach(r => r.decision = pending.d); remember();
  }
  pending = null; confirmBar.hidden = true; document.activeElement.blur(); showUndo(); render();
}
document.getElementById("confirm-yes").addEventListener("click", () => answer(true));
document.getElementById("confirm-no").addEventListener("click", () => answer(false));
function showUndo() {
  undoBtn.disabled = !undone.length;
  undoBtn.textContent = undone.length ? `undo: ${undone[undone.length - 1].what}` : "undo";
}
undoBtn.addEventListener("click", () => { const u = undone.pop(); if (!u) return;
  u.was.forEach(([r, d]) => r.decision = d); remember(); showUndo(); undoBtn.blur(); render(); });

// paging and the keyboard
const flagKey = f => f === "judge_wrong" ? "w" : f[0];
function go(p) { page = Math.max(0, Math.min(p, Math.ceil(view.length / D.pageRows) - 1)); cursor = page * D.pageRows;
                 render(); }
document.querySelectorAll(".prev").forEach(b => b.addEventListener("click", () => go(page - 1)));
document.querySelectorAll(".next").forEach(b => b.addEventListener("click", () => go(page + 1)));
function move(to) {
  if (!view.length) return;
  cursor = Math.max(0, Math.min(to, view.length - 1));
  page = Math.floor(cursor / D.pageRows);
  render();
  const c = table.querySelector("tbody.cursor");
  if (c && c.scrollIntoView) c.scrollIntoView({block: "nearest"});
}
document.addEventListener("keydown", e => {
  const t = e.target;
  if (t.tagName === "INPUT" && t.type !== "checkbox" || t.tagName === "SELECT") {
    if (e.key === "Escape") t.blur();
    return;
  }
  if (!confirmBar.hidden) {  // a bulk action waits for its answer: Enter / y confirms, Escape / n cancels
    if (e.key === "Escape" || e.key === "n") { answer(false); e.preventDefault(); }
    else if (e.key === "Enter" || e.key === "y") { answer(true); e.preventDefault(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const r = view[cursor], k = e.key;
  if (k === "j" || k === "ArrowDown") move(cursor + 1);
  else if (k === "k" || k === "ArrowUp") move(cursor - 1);
  else if (k === "]") go(page + 1);
  else if (k === "[") go(page - 1);
  else if (!r) return;
  else if (k === "u") { decide(r, ""); render(); }
  else if (k === "n") { const n = table.querySelector("tbody.cursor input.note"); if (n) n.focus(); }
  else if (D.decisions.some(d => d[0] === k)) { decide(r, D.decisions.find(d => d[0] === k)); move(cursor + 1); }
  else if (D.flags.some(f => flagKey(f) === k)) {
    const f = D.flags.find(f => flagKey(f) === k);
    r[f] = r[f] ? "" : "yes"; remember(); render();
  }
  else return;
  e.preventDefault();
});

// save: the export's columns with the decisions filled in
function csvCell(v) {  // review_file.to_cell's rule: text a spreadsheet would evaluate gets a leading apostrophe
  let s = String(v ?? "");
  if (typeof v === "string" && D.formulaStart.some(c => s.replace(/^'+/, "").startsWith(c))) s = "'" + s;
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
document.getElementById("save").addEventListener("click", () => {
  const lines = [D.fields.map(csvCell).join(",")];
  rows.forEach(r => lines.push(D.fields.map(f => csvCell(r[f])).join(",")));
  const url = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], {type: "text/csv"}));
  const a = el("a", {href: url, download: D.file});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});
refresh(true);
</script></body></html>
"""
