"""`imgq report JOB -o report.html`: one HTML page about a job, with its pictures in a folder beside it.

On disk: ``report.html`` and ``report_files/`` (``thumbs/<image>.jpg``, ``maps/<image>-<layer>.png``),
linked by relative URLs, so the two move together. The page fetches nothing from the network. The folder
holds a marker file (``.imgq-report``): writing the report again replaces a folder that has it, and
refuses to touch one that does not (a user's own ``report_files/``).

The page: a summary (counts, rate, weights, a histogram of the top labels, error codes), the list of
errors, the job's photos alike (producer/report/duplicates.py: a job submitted with --embeddings), and a grid
of cards in submission order: thumbnail, top-k labels with score bars and, for an image with dumps, for each
dumped layer, its most active channels as heat maps (producer/report/heatmaps.py). The cards are data (JSON in
the page) that a small script renders one page at a time, with lazily loaded images: a page of a 100,000-image
job holds page-size cards, not 100,000.

``group``: the report of the images of one WordNet group (imgq/labels/groups.py) only, those whose group score (the
sum of the group's classes' scores in the top-k) is at least GROUP_SHARE: more of the model's belief in the
group than against it. The summary then says so, and counts only those images.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

from imgq.contract import ResultRecord, is_untrained
from imgq.labels import groups as wordnet_groups
from imgq.results.job import JobStatus
from imgq.results.store import ResultStore
from imgq.storage.files import atomic_path, usual_mode
from producer.exports.dumps import DumpError, dump_file, dumped_layers, load_layer
from producer.options.words import plural
from producer.report.duplicates import MAX_GROUPS, duplicates_section
from producer.report.heatmaps import channel_title, feature_grid
from producer.report.previews import Fetches, PreviewLimits

MAP_CHANNELS = 8  # heat maps per layer and image in the report
MAP_CELL = 48  # longest side of one heat map in the report, in pixels
HISTOGRAM_LABELS = 20
GROUP_SHARE = wordnet_groups.SHARE  # `imgq report --group`: an image is in a group when its score reaches this

_NO_SECTION = "<p class=dup-none>No duplicates section: none was asked (--duplicate-groups 0).</p>"

MARKER = ".imgq-report"
# Written into every picture folder imgq makes: only a folder holding it is ever replaced (and so deleted).


class ReportError(Exception):
    """The report cannot go where it was asked to: its picture folder is not imgq's, or its folder is missing."""


@dataclass(frozen=True)
class Report:
    """What was written: the page, its folder of pictures, and how many of each."""

    path: str
    folder: str
    images: int
    thumbnails: int
    heatmaps: int
    errors: int
    duplicate_groups: int = 0  # groups of photos alike the job has (its section shows at most max_groups)
    measured: tuple[str, ...] = ()  # what the duplicates' calibration measured, for the user
    unfetched: tuple[str, ...] = ()  # "LOCATION: why" of each image whose picture could not be fetched, in order


def write_report(store: ResultStore, job: str, out: str, dump_root: str, page_size: int = 100,
                 channels: int = MAP_CHANNELS, group: str | None = None,
                 limits: PreviewLimits | None = None, duplicate_groups: int = MAX_GROUPS) -> Report:
    """Write the report of ``job`` to ``out`` and its pictures to ``<out stem>_files/``; with ``group``, of the
    images in that WordNet group only (see the module). ``limits``: what a thumbnail may read
    (producer/report/previews.py; default: the settings' defaults). ``duplicate_groups``: at most this many
    groups of photos alike in the duplicates section (producer/report/duplicates.py; 0: no section, and no
    calibration).

    The pictures are made in a temporary folder that replaces the old one at the end (only if that one
    is imgq's, see MARKER), and the page is written atomically. Raises JobNotFound, ReportError (also for a
    ``group`` that is not one).
    """
    if group is not None and group not in wordnet_groups.names():
        raise ReportError(f"{group!r} is not a group. Groups: {', '.join(sorted(wordnet_groups.names()))}.")
    status = store.status(job)
    folder = os.path.splitext(out)[0] + "_files"
    _refuse_unless_ours(folder)  # before the work, and again at the replacement
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ReportError(f"Cannot write {out}: the folder {parent} does not exist.")
    staging = tempfile.mkdtemp(dir=parent, prefix=".imgq-report-")
    os.chmod(staging, usual_mode(0o777))  # mkdtemp makes it private (0700); a report is meant to be shared
    try:
        for sub in ("thumbs", "maps"):
            os.makedirs(os.path.join(staging, sub))
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as marker:
            marker.write(f"Made by `imgq report`, which replaces this folder when it writes {os.path.basename(out)} "
                         "again.\n")
        link = quote(os.path.basename(folder))
        records = [r for r in store.iter_records(job) if group is None or in_group(r, group)]
        # Decoding, resizing and PNG encoding release the GIL: threads use the cores.
        fetches = Fetches(limits or PreviewLimits())
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            cards = list(pool.map(lambda r: _card(r, staging, link, dump_root, channels, fetches), records))
        dups = (duplicates_section(job, dump_root, staging, link, {c["i"]: c for c in cards}, fetches.limits,
                                   duplicate_groups)
                if duplicate_groups else None)
        page = _page(status, records, cards, page_size, group, dups.html if dups else _NO_SECTION)
        _replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as file:
        file.write(page)
    return Report(out, folder, len(cards), sum(1 for c in cards if "t" in c) + (dups.thumbnails if dups else 0),
                  sum(len(c.get("m", ())) for c in cards), sum(1 for c in cards if "e" in c),
                  dups.groups if dups else 0, tuple(dups.measured) if dups else (),
                  tuple(f"{c['p']}: {c['np']}" for c in cards if "np" in c))


def in_group(record: ResultRecord, group: str) -> bool:
    """The record's score for ``group`` (summed over its top-k) is at least GROUP_SHARE: the rule classify's
    summary counts by (imgq.labels.groups.memberships)."""
    return group in wordnet_groups.memberships(record.top_k)


def _refuse_unless_ours(folder: str) -> None:
    """Raises ReportError when ``folder`` exists and is not a picture folder imgq made: a file, a symbolic
    link, or a folder without MARKER."""
    if not os.path.lexists(folder):
        return
    if os.path.islink(folder) or not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, MARKER)):
        raise ReportError(f"{folder} exists and imgq did not make it (it has no {MARKER}): imgq will not replace "
                          "it; move it away or choose another -o.")


def _replace_folder(new: str, folder: str) -> None:
    """Put ``new`` in the place of ``folder`` (a rename; the old folder, imgq's, is removed after).

    The old folder is moved aside first and checked once more there, so that a folder put in its place
    since the check at the start is moved back, not deleted."""
    old = None
    if os.path.lexists(folder):
        _refuse_unless_ours(folder)
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(folder)), prefix=".imgq-old-")
        aside = os.path.join(old, "files")
        os.replace(folder, aside)
        try:
            _refuse_unless_ours(aside)
        except ReportError:
            os.replace(aside, folder)
            os.rmdir(old)
            raise ReportError(f"{folder} changed while the report was made and imgq did not make it: left as "
                              "it is.") from None
    os.replace(new, folder)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def shown(text: str) -> str:
    """``text`` as a page can show it: a path that is not UTF-8 (surrogate escapes) gets U+FFFD instead."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _card(record: ResultRecord, folder: str, link: str, dump_root: str, channels: int,
          fetches: Fetches) -> dict:
    """One image's card data: ``i`` id, ``n`` name, ``p`` path, ``k`` [[label, score]], ``hd`` (the same of the
    job's head), and ``t, w, h`` (thumbnail), ``np`` (why its picture could not be fetched), ``e`` (error), ``m``
    (heat maps: [[layer, url, width, height, title]]), ``x`` (a note)."""
    image = record.image
    card = {"i": image, "n": shown(os.path.basename(record.path)), "p": shown(record.path),
            "k": [[t.label, round(t.score, 4)] for t in record.top_k]}
    if record.error is not None:
        card["e"] = f"{record.error.code}: {shown(record.error.message)}"
        return card
    if record.head and record.head.get("top_k"):
        card["hd"] = [[f"{record.head['name']}: {t['label']}", round(t["score"], 4)] for t in record.head["top_k"]]
    shown_preview = fetches.preview(record.path)  # no picture: the card says "no preview", and why if it knows
    picture = shown_preview.picture
    if shown_preview.problem:
        card["np"] = shown(shown_preview.problem)
    if picture is not None:
        picture.save(os.path.join(folder, "thumbs", f"{image}.jpg"), "JPEG", quality=80)
        card.update(t=f"{link}/thumbs/{image}.jpg", w=picture.width, h=picture.height)
    try:
        maps = _layer_maps(record, folder, link, dump_root, channels)
    except DumpError as exc:
        card["x"] = str(exc)
        return card
    if maps:
        card["m"] = maps
    elif record.activations:
        card["x"] = "its dump is not under this machine's dump root (IMGQ_DUMP_ROOT)"
    return card


def _layer_maps(record: ResultRecord, folder: str, link: str, dump_root: str, channels: int) -> list[list]:
    path = dump_file(record, dump_root)
    if path is None:
        return []
    maps = []
    for layer, shape in dumped_layers(record).items():
        activations = load_layer(path, layer)
        spatial = activations.ndim == 3
        grid = feature_grid(activations, channels, cell=MAP_CELL if spatial else 4 * MAP_CELL, columns=4)
        name = f"{record.image}-{layer}.png"
        grid.save(os.path.join(folder, "maps", name), format="PNG")
        title = f"{layer} {'x'.join(map(str, shape))}: {channel_title(activations, channels)}"
        maps.append([layer, f"{link}/maps/{name}", grid.width, grid.height, title])
    return maps


def _page(status: JobStatus, records: list[ResultRecord], cards: list[dict], page_size: int,
          group: str | None = None, duplicates: str = "") -> str:
    # Never a "</script>" in data, nor a bare NaN (JSON.parse throws on it: allow_nan=False raises first).
    data = json.dumps(cards, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    title = f"imgq report: job {status.id}" + (f", group {group}" if group else "")
    summary = _summary(status, records, cards)
    if group:
        summary = (f"<p class=filter>The images whose score for the group <b>{html.escape(group)}</b> is at least "
                   f"{GROUP_SHARE}: {len(records)} of {status.processed}.</p>{summary}")
    values = {"TITLE": html.escape(title), "SUMMARY": summary,
              "ERRORS": _errors(records), "DUPLICATES": duplicates, "PAGE_SIZE": str(int(page_size)), "CARDS": data}
    # One pass: text put in (a path, a label) is never searched for placeholders itself.
    return re.sub(r"%([A-Z_]+)%", lambda m: values[m.group(1)], PAGE)


def _summary(status: JobStatus, records: list[ResultRecord], cards: list[dict]) -> str:
    weights = sorted({r.weights for r in records if r.weights})
    rate = f"{status.rate:.1f} images/s" if status.rate else "-"
    layers = ", ".join(status.params.get("activations", [])) or "none"
    facts = [("job", f"{status.id} ({status.name})" if status.name != status.id else status.id),
             ("state", status.state), ("images", f"{status.processed} of {status.total} have records"),
             ("ok", status.ok), ("failed", status.failed), ("rate", rate),
             ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.created))),
             ("weights", ", ".join(weights) or "-"),
             ("dumped layers", f"{layers} ({status.params.get('activations_dtype', '-')})"),
             ("with heat maps", sum(1 for c in cards if "m" in c))]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    warning = ('<p class="warn">These weights are untrained: the labels are meaningless.</p>'
               if any(is_untrained(w) for w in weights) else "")
    top1 = Counter(r.top_k[0].label for r in records if r.ok and r.top_k)
    groups = Counter(g for r in records if r.ok for g in wordnet_groups.memberships(r.top_k))  # as --group selects
    codes = Counter(r.error.code for r in records if r.error is not None)
    return (f"{warning}<table class=facts>{rows}</table>"
            f"<h3>Top label of each image ({len(top1)} distinct)</h3>{_bars(top1.most_common(HISTOGRAM_LABELS))}"
            f"{_head_sections(records)}"
            f"<h3>Groups of the images (score at least {GROUP_SHARE})</h3>"
            f"{_bars(groups.most_common(HISTOGRAM_LABELS)) if groups else '<p>none</p>'}"
            f"<h3>Error codes</h3>{_bars(codes.most_common()) if codes else '<p>none</p>'}")


HEAD_SECTION_IMAGES = 200  # images named in a head label's section; the cards show them all


def _head_sections(records: list[ResultRecord]) -> str:
    """A section per label of the job's head (imgq learn): the images whose best head label it is."""
    by_label: dict[tuple[str, str], list[ResultRecord]] = {}
    for r in records:
        head = r.head or {}
        if r.ok and head.get("top_k"):
            by_label.setdefault((head["name"], head["top_k"][0]["label"]), []).append(r)
    sections = []
    for (name, label), members in sorted(by_label.items(), key=lambda item: (item[0][0], -len(item[1]))):
        names = ", ".join(f"#{r.image} {shown(os.path.basename(r.path))}" for r in members[:HEAD_SECTION_IMAGES])
        more = f" and {len(members) - HEAD_SECTION_IMAGES} more" if len(members) > HEAD_SECTION_IMAGES else ""
        count = plural(len(members), "image")
        sections.append(f"<h3 class=head>Head {html.escape(name)}: {html.escape(label)} ({count})</h3>"
                        f"<p class=head-images>{html.escape(names + more)}</p>")
    return "".join(sections)


def _bars(counts: list[tuple[str, int]]) -> str:
    most = max((n for _, n in counts), default=1)
    return "<table class=hist>" + "".join(
        f"<tr><td>{html.escape(str(label))}</td><td class=n>{n}</td>"
        f"<td class=barcell><span class=bar style='width:{100 * n / most:.1f}%'></span></td></tr>"
        for label, n in counts) + "</table>"


def _errors(records: list[ResultRecord]) -> str:
    errors = [(r, r.error) for r in records if r.error is not None]
    if not errors:
        return "<p>No errors.</p>"
    rows = "".join(
        f"<tr><td>{r.image}</td><td>{html.escape(shown(r.path))}</td>"
        f"<td>{html.escape(error.code)}</td><td>{html.escape(shown(error.message))}</td></tr>" for r, error in errors)
    return f"<table class=errors><tr><th>image</th><th>path</th><th>code</th><th>message</th></tr>{rows}</table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; } h3 { font-size: 1em; }
.warn { background: #fff3cd; border: 1px solid #e0c36a; padding: .5em .8em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
.facts th { color: #666; font-weight: normal; }
.hist td.n { text-align: right; } .barcell { width: 300px; }
.bar { display: inline-block; height: 10px; background: #4a78c2; }
.errors td, .errors th { border-bottom: 1px solid #ddd; } .errors td:nth-child(2) { word-break: break-all; }
nav { margin: 1em 0; } nav button { margin-right: .4em; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; overflow: hidden; }
.card.bad { border-color: #d9534f; }
.thumb { display: block; margin: 0 auto 6px; max-width: 100%; height: auto; }
.none { height: 100px; display: flex; align-items: center; justify-content: center; background: #eee;
        color: #888; margin-bottom: 6px; }
.name { font-weight: 600; word-break: break-all; margin-bottom: 4px; } .err { color: #b52b27; }
.note { color: #888; font-style: italic; }
.label { display: grid; grid-template-columns: 1fr 60px 44px; gap: 4px; font-size: 12px; align-items: center; }
.label .track { background: #eee; height: 8px; } .label .fill { background: #4a78c2; height: 8px; }
.label .score { text-align: right; color: #555; }
figure { margin: 6px 0 0; } figcaption { font-size: 11px; color: #555; }
figure img { max-width: 100%; height: auto; image-rendering: pixelated; }
.dup-group { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 4px 10px 10px; margin: 10px 0; }
.dup-group h3 { margin: 6px 0; } .dup-row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure.dup { margin: 0; padding: 4px; border: 3px solid transparent; border-radius: 6px; max-width: 180px; }
figure.dup.keeper { border-color: #2e8b57; background: #eef8f1; }
figure.dup img.dup-thumb { display: block; image-rendering: auto; }
figure.dup .name { font-size: 11px; } .keeper-mark { color: #fff; background: #2e8b57; padding: 0 5px;
                                                    border-radius: 3px; font-weight: 600; }
.dup-more, .dup-none, .dup-intro { color: #555; }
</style></head><body>
<h1>%TITLE%</h1>
<h2>Summary</h2>%SUMMARY%
<h2>Errors</h2>%ERRORS%
<h2 id="duplicates">Duplicates</h2>%DUPLICATES%
<h2>Images</h2>
<nav><button id="first">&laquo;</button><button id="prev">&lsaquo; previous</button><span id="where"></span>
<button id="next">next &rsaquo;</button><button id="last">&raquo;</button></nav>
<div id="grid"></div>
<script id="cards" type="application/json">%CARDS%</script>
<script>
"use strict";
const cards = JSON.parse(document.getElementById("cards").textContent);
const size = %PAGE_SIZE%, pages = Math.max(1, Math.ceil(cards.length / size));
let current = 1;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function img(src, w, h, alt, cls) {
  const i = el("img", cls); i.src = src; i.width = w; i.height = h; i.alt = alt; i.title = alt;
  i.loading = "lazy"; return i;
}
function card(c) {
  const d = el("div", c.e ? "card bad" : "card");
  const none = c.e ? "not classified" : c.np ? "no preview: " + c.np : "no preview";
  d.append(c.t ? img(c.t, c.w, c.h, c.p, "thumb") : el("div", "none", none));
  const name = el("div", "name", "#" + c.i + " " + c.n); name.title = c.p; d.append(name);
  if (c.e) d.append(el("div", "err", c.e));
  for (const [label, score] of (c.k || []).concat(c.hd || [])) {
    const row = el("div", "label"), track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = Math.max(score * 100, 0.5) + "%"; track.append(fill);
    row.append(el("span", "", label), track, el("span", "score", (score * 100).toFixed(2) + "%"));
    d.append(row);
  }
  for (const [layer, src, w, h, title] of c.m || []) {
    const f = el("figure"); f.append(img(src, w, h, title), el("figcaption", "", layer)); d.append(f);
  }
  if (c.x) d.append(el("div", "note", c.x));
  return d;
}
function show(page) {
  current = Math.min(Math.max(1, page), pages);
  const start = (current - 1) * size, shown = cards.slice(start, start + size);
  document.getElementById("grid").replaceChildren(...shown.map(card));
  document.getElementById("where").textContent = " page " + current + " of " + pages + " (images " +
    (shown.length ? start + 1 : 0) + "-" + (start + shown.length) + " of " + cards.length + ") ";
  if (location.hash !== "#page=" + current) history.replaceState(null, "", "#page=" + current);
}
document.getElementById("first").onclick = () => show(1);
document.getElementById("prev").onclick = () => show(current - 1);
document.getElementById("next").onclick = () => show(current + 1);
document.getElementById("last").onclick = () => show(pages);
show(parseInt((location.hash.match(/page=(\\d+)/) || [])[1] || "1", 10));
window.imgqReport = { show, pages };
</script></body></html>
"""
