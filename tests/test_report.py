"""`imgq report`, `imgq show` and the heat maps, on a job whose records and dumps are written here the way a
worker writes them (worker.batches.dumps.write_dump); and the report in a real headless Chromium.

The end-to-end run with a real worker is in tests/test_activations.py.
"""

import dataclasses
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgq.contract import error_record, ok_record
from imgq.jobs import submit as enqueue
from imgq.results.store import ResultStore
from producer.cli import cli
from producer.report import heatmaps
from producer.report import page as report
from producer.report.page import write_report
from tests import imagegen
from tests.jobs import write_embeddings
from worker.batches.dumps import write_dump

CHROMIUM = "/usr/bin/chromium"
LAYERS = {"conv1_relu": (112, 112, 64), "avg_pool": (2048,)}


@dataclasses.dataclass
class Job:
    id: str
    settings: object
    store: ResultStore
    paths: list
    dump_root: str


def fake_activations(seed: int) -> dict:
    """ReLU-like activations with a known most active channel (``seed % 64``) in conv1_relu."""
    rng = np.random.default_rng(seed)
    conv = np.maximum(rng.normal(size=LAYERS["conv1_relu"]), 0).astype(np.float32)
    conv[:, :, seed % 64] += 5.0
    return {"conv1_relu": conv, "avg_pool": rng.random(2048, dtype=np.float32)}


@pytest.fixture
def job(settings, tmp_path):
    """Six images: four classified with dumps, one whose file is gone since, one error."""
    settings = dataclasses.replace(settings, dump_root=str(tmp_path / "dumps"))
    store = ResultStore.from_settings(settings)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    paths = [str(imagegen.save(pictures / f"p{i}.{ext}", seed=i)) for i, ext in enumerate(["jpg", "png", "webp"])]
    paths.append(str(imagegen.save(pictures / "tall <b>x.jpg", size=(120, 400), seed=3)))
    paths += [str(pictures / "gone.jpg"), str(pictures / "notes.jpg")]
    (pictures / "notes.jpg").write_text("not a picture")
    submitted = enqueue.submit(iter(paths), settings=settings, store=store, activations=tuple(LAYERS))
    records = [_classified(submitted.job, i, p, settings.dump_root) for i, p in enumerate(paths[:5])]
    records.append(error_record(submitted.job, 5, paths[5], "not_an_image", "cannot identify </script><b>",
                                weights="random:0 (untrained: labels are meaningless)"))
    store.record_results(submitted.job, records)
    return Job(submitted.job, settings, store, paths, settings.dump_root)


def _classified(job: str, image: int, path: str, dump_root: str) -> dict:
    dump = write_dump(dump_root, job, image, fake_activations(image), "float16")
    top = [{"wnid": f"n{k:08d}", "label": label, "score": score}
           for k, (label, score) in enumerate([("tench", 0.6), ("goldfish", 0.25), ("hen", 0.1)])]
    top[0]["label"] = ["tench", "hen"][image % 2]
    return ok_record(job, image, path, top, weights="random:0 (untrained: labels are meaningless)",
                     activations=dump)


def cards_of(page: str) -> list[dict]:
    return json.loads(re.search(r'<script id="cards" type="application/json">(.*?)</script>', page, re.S)[1])


def invoke(settings, *args):
    return CliRunner().invoke(cli, list(args), env=settings.as_env(), catch_exceptions=False)


def test_report_writes_a_page_and_its_pictures(job, tmp_path):
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    result = invoke(job.settings, "report", job.id, "-o", str(out), "--page-size", "4")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    cards = cards_of(page)
    assert [c["i"] for c in cards] == list(range(6)) and "const size = 4," in page
    files = out.parent / "report_files"
    assert sorted(os.listdir(files / "thumbs")) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert sorted(os.listdir(files / "maps")) == sorted(f"{i}-{layer}.png" for i in range(5) for layer in LAYERS)
    assert [bool(c.get("t")) for c in cards] == [True] * 4 + [False] * 2
    assert cards[4]["np"] == "missing: no such file"  # gone since it was classified: the card and one line say so
    assert f"No thumbnail of {job.paths[4]}: missing: no such file" in result.output.splitlines()
    assert [len(c.get("m", [])) for c in cards] == [2] * 5 + [0]
    assert cards[5]["e"].startswith("not_an_image") and "not_an_image" in page.split('id="cards"')[0]
    assert Image.open(files / "thumbs" / "3.jpg").size == (48, 160)  # 120x400, longest side 160
    # The most active channel of image 2's conv1_relu is channel 2: first in its grid's title.
    assert "channels 2, " in cards[2]["m"][0][4]
    assert "untrained" in page and "tench" in page
    # Markup in a file name or an error message never closes the data script nor reaches the page as markup.
    assert "<b>" not in page and cards[3]["n"] == "tall <b>x.jpg" and cards[5]["e"].endswith("</script><b>")
    assert not [n for n in os.listdir(out.parent) if n.startswith(".imgq")]


def test_report_again_replaces_the_old_pictures(job, tmp_path):
    out = tmp_path / "report.html"
    write_report(job.store, job.id, str(out), job.dump_root)
    (tmp_path / "report_files" / "thumbs" / "stale.jpg").write_bytes(b"old")
    written = write_report(job.store, job.id, str(out), job.dump_root)
    assert (written.images, written.thumbnails, written.heatmaps, written.errors) == (6, 4, 10, 1)
    assert "stale.jpg" not in os.listdir(tmp_path / "report_files" / "thumbs")
    assert sorted(os.listdir(tmp_path)) == ["dumps", "pictures", "report.html", "report_files"]  # no temporaries


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_report_never_replaces_a_picture_folder_imgq_did_not_make(job, tmp_path, kind):
    out, folder = tmp_path / "talk.html", tmp_path / "talk_files"
    if kind == "folder":
        folder.mkdir()
        (folder / "precious.txt").write_text("the user's")
    elif kind == "file":
        folder.write_text("the user's")
    else:  # a link to a folder of imgq's elsewhere: still not this folder
        (tmp_path / "elsewhere").mkdir()
        write_report(job.store, job.id, str(tmp_path / "elsewhere" / "r.html"), job.dump_root)
        folder.symlink_to(tmp_path / "elsewhere" / "r_files")
    before = sorted(os.listdir(tmp_path))
    result = invoke(job.settings, "report", job.id, "-o", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"Error: {folder} exists and imgq did not make it (it has no "
                                                  f"{report.MARKER}): imgq will not replace it; move it away or "
                                                  "choose another -o."]
    assert sorted(os.listdir(tmp_path)) == before  # no page, no temporaries, the folder as it was
    if kind == "folder":
        assert (folder / "precious.txt").read_text() == "the user's"


def test_report_marks_its_folder_and_replaces_only_a_marked_one(job, tmp_path):
    out = tmp_path / "r.html"
    write_report(job.store, job.id, str(out), job.dump_root)
    assert (tmp_path / "r_files" / report.MARKER).is_file()
    new = tmp_path / "new"
    new.mkdir()
    (tmp_path / "r_files" / report.MARKER).unlink()  # as if a user's folder took its place during a report
    with pytest.raises(report.ReportError, match="imgq did not make it"):
        report._replace_folder(str(new), str(tmp_path / "r_files"))
    assert sorted(os.listdir(tmp_path / "r_files")) == ["maps", "thumbs"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".imgq")]


def test_show_draws_the_most_active_channels(job, tmp_path):
    out = tmp_path / "grid.png"
    result = invoke(job.settings, "show", job.id, "1", "--layer", "conv1_relu", "-o", str(out), "--channels", "4",
                    "--cell", "64")
    assert result.exit_code == 0, result.output
    assert "channels 1, " in result.stderr
    grid = Image.open(out)
    assert grid.size == (2 * 66 + 2, 2 * (66 + heatmaps.LABEL_HEIGHT) + 2)
    result = invoke(job.settings, "show", job.id, "1", "--layer", "avg_pool", "-o", str(out))
    assert result.exit_code == 0 and "all 2048 values" in result.stderr


@pytest.mark.parametrize(("image", "layer", "message"), [
    ("1", "conv3_block4_out", "has no dump of layer 'conv3_block4_out' (dumped: conv1_relu, avg_pool)"),
    ("5", "conv1_relu", "was not classified (not_an_image)"),
    ("9", "conv1_relu", "has no record of image 9"),
])
def test_show_refuses_in_one_line(job, tmp_path, image, layer, message):
    result = invoke(job.settings, "show", job.id, image, "--layer", layer, "-o", str(tmp_path / "g.png"))
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "g.png").exists()


def test_colormap_runs_dark_to_bright():
    assert heatmaps.colorize(np.array([0.0]))[0].tolist() == [0, 0, 4]
    assert heatmaps.colorize(np.array([1.0]))[0].tolist() == [252, 255, 164]
    brightness = heatmaps.LUT.astype(int).sum(axis=1)
    assert brightness[-1] > brightness[128] > brightness[0]


def test_most_active_channels_and_vector_layout():
    activations = np.zeros((4, 4, 5), dtype=np.float16)
    activations[..., 3], activations[..., 1] = 2, 1
    assert heatmaps.most_active(activations, 2).tolist() == [3, 1]
    assert len(heatmaps.most_active(activations, 0)) == 5
    assert heatmaps.vector_raster(np.arange(2048)).shape == (32, 64)
    assert heatmaps.vector_raster(np.arange(7.0)).shape == (3, 3)  # 7 = 1 x 7 is too wide: padded square
    assert heatmaps.feature_grid(np.ones((7, 7, 8)), 8, cell=10, columns=4).size == (4 * 12 + 2, 2 * 12 + 2)


# -- in a real browser -------------------------------------------------------------------------------------

CHECK_SCRIPT = """<pre id="imgcheck">pending</pre><script>
(async () => {
  const seen = [];
  for (let page = 1; page <= window.imgqReport.pages; page++) {
    window.imgqReport.show(page);
    const images = [...document.images];
    images.forEach(i => { i.loading = "eager"; });
    await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
    images.forEach(i => seen.push([page, i.getAttribute("src"), i.naturalWidth, i.naturalHeight]));
  }
  document.getElementById("imgcheck").textContent = JSON.stringify(seen);
})();
</script></body>"""


def chromium(*args, tmp_path, timeout=90) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (`make test` installs "
                                                         "it as root): the report is not checked in a browser")
def test_report_in_headless_chromium(job, tmp_path):
    out = tmp_path / "report.html"
    write_report(job.store, job.id, str(out), job.dump_root, page_size=4)
    check = tmp_path / "check.html"  # beside the report, so its relative links resolve the same way
    check.write_text(out.read_text().replace("</body>", CHECK_SCRIPT))
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", check.as_uri(), tmp_path=tmp_path).stdout
    seen = json.loads(re.search(r'<pre id="imgcheck">(.*?)</pre>', dom, re.S)[1])
    assert len(seen) == 4 + 10  # every thumbnail and heat-map grid, over both pages
    assert {page for page, *_ in seen} == {1, 2}
    assert [s for s in seen if s[2] == 0 or s[3] == 0] == []

    shot = tmp_path / "report.png"
    chromium("--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri(), tmp_path=tmp_path)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape == (1400, 1280, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 100
    if os.environ.get("IMGQ_KEEP_SCREENSHOT"):  # to look at it: IMGQ_KEEP_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copy(shot, os.environ["IMGQ_KEEP_SCREENSHOT"])


# -- the duplicates section ------------------------------------------------------------------------------------

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos")
needs_photos = pytest.mark.skipif(not os.path.isdir(PHOTOS), reason=f"no shared photos at {PHOTOS}")
UNTRAINED = "random:0 (untrained: labels are meaningless)"


@pytest.fixture
def alike_job(settings, tmp_path):
    """Ten real photos with embedding files (random weights: pHash and content hash only): p0 with a byte-for-byte
    copy and a re-encode (quality 55), p1 with a copy and a resize (60%), p2 with a re-encode, p3 and p4 alone.
    The copies make two groups whatever the threshold calibrated."""
    settings = dataclasses.replace(settings, dump_root=str(tmp_path / "dumps"))
    store = ResultStore.from_settings(settings)
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(os.listdir(PHOTOS))[::50][:5]
    paths = []
    for number, name in enumerate(sources):
        picture = Image.open(os.path.join(PHOTOS, name)).convert("RGB")
        paths.append(str(folder / f"p{number}.jpg"))
        picture.save(paths[-1], quality=92)
        if number in (0, 1):
            paths.append(str(folder / f"p{number}-same.jpg"))
            shutil.copyfile(paths[-2], paths[-1])
        if number in (0, 2):
            paths.append(str(folder / f"p{number}-q55.jpg"))
            picture.save(paths[-1], quality=55)
        if number == 1:
            paths.append(str(folder / f"p{number}-small.jpg"))
            picture.resize((round(picture.width * 0.6), round(picture.height * 0.6))).save(paths[-1])
    submitted = enqueue.submit(iter(paths), settings=settings, store=store)
    store.record_results(submitted.job, [ok_record(submitted.job, i, p, [{"wnid": "n01440764", "label": "tench",
                                                                          "score": 0.5}], weights=UNTRAINED)
                                         for i, p in enumerate(paths)])
    write_embeddings(settings, submitted.job, paths, UNTRAINED)
    return Job(submitted.job, settings, store, paths, settings.dump_root)


def dup_groups(page: str) -> dict[int, list[tuple[str, bool, str]]]:
    """The duplicates section's groups as written: number -> [(file name, keeper, caption text)]."""
    found = {}
    for number, body in re.findall(r"<div class=dup-group data-group=(\d+)>(.*?)</div></div>", page, re.S):
        found[int(number)] = [(os.path.basename(html.unescape(alt)), "keeper" in cls,
                               re.sub("<[^>]+>", "", caption))
                              for cls, alt, caption in re.findall(
                                  r"<figure class='([^']*)'.*?alt=\"([^\"]*)\".*?<figcaption>(.*?)</figcaption>",
                                  body, re.S)]
    return found


@needs_photos
def test_the_duplicates_section_shows_the_groups_of_imgq_duplicates_with_their_keepers(alike_job, tmp_path):
    out = tmp_path / "report.html"
    result = invoke(alike_job.settings, "report", alike_job.id, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "Calibrated on altered copies of" in result.stderr and "groups of photos alike" in result.stderr
    page = out.read_text()
    groups = dup_groups(page)
    dups = invoke(alike_job.settings, "duplicates", alike_job.id)
    members = [json.loads(line) for line in dups.stdout.splitlines()]
    # The same groups, numbers, keepers and similarities as `imgq duplicates` (one way of finding them).
    expected = {}
    for m in members:
        expected.setdefault(m["group"], set()).add((os.path.basename(m["path"]), m["keeper"]))
    assert {n: {(name, keeper) for name, keeper, _ in g} for n, g in groups.items()} == expected
    assert len(groups) >= 2
    for members_shown in groups.values():
        assert [keeper for _, keeper, _ in members_shown].count(True) == 1 and members_shown[0][1]  # keeper first
        assert len({name[:2] for name, _, _ in members_shown}) == 1  # no two photos in one group
        sizes = {name: os.path.getsize(os.path.join(os.path.dirname(alike_job.paths[0]), name))
                 for name, _, _ in members_shown}
        assert sizes[members_shown[0][0]] == max(sizes.values())  # the keeper: the largest file
    p0 = next(g for g in groups.values() if g[0][0] in ("p0.jpg", "p0-same.jpg"))
    assert any(caption.endswith("identical, 1.0000 to the keeper") for _, _, caption in p0)
    assert "more group" not in page and "No duplicates section" not in page


@needs_photos
def test_the_duplicates_section_is_capped_and_says_how_many_more(alike_job, tmp_path):
    out = tmp_path / "report.html"
    written = write_report(alike_job.store, alike_job.id, str(out), alike_job.dump_root, duplicate_groups=1)
    page = out.read_text()
    assert len(dup_groups(page)) == 1 and written.duplicate_groups >= 2
    more = written.duplicate_groups - 1
    assert f"{more} more group{'s' if more > 1 else ''} (imgq duplicates {alike_job.id} lists them all)" in page


@needs_photos
def test_members_without_a_card_get_thumbnails_of_their_own(alike_job, tmp_path):
    out = tmp_path / "report.html"
    written = write_report(alike_job.store, alike_job.id, str(out), alike_job.dump_root, group="dog")
    page = out.read_text()
    assert written.images == 0 and cards_of(page) == []  # every image is a tench: no card
    shown = re.findall(r'<img class=dup-thumb src="report_files/thumbs/(\d+).jpg"', page)
    assert len(shown) >= 4 and written.thumbnails == len(shown)
    for image in shown:
        assert Image.open(tmp_path / "report_files" / "thumbs" / f"{image}.jpg").width > 0


def test_a_job_without_embeddings_has_no_duplicates_section_and_one_line_why(job, tmp_path):
    out = tmp_path / "report.html"
    assert invoke(job.settings, "report", job.id, "-o", str(out)).exit_code == 0
    page = out.read_text()
    [line] = re.findall(r"<p class=dup-none>(.*?)</p>", page)
    assert line == (f"No duplicates section: Job {job.id} has no embedding files under "
                    f"{os.path.join(job.dump_root, job.id)}: submit it with --embeddings.")
    assert "dup-group" not in page.split("</style>")[1]


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("-1", False), ("nan", False), ("inf", False),
                                           ("100001", False), ("99999999999999999999", False)])
def test_duplicate_groups_edges(job, tmp_path, value, ok):
    out = tmp_path / "report.html"
    result = invoke(job.settings, "report", job.id, "-o", str(out), "--duplicate-groups", value)
    assert "Traceback" not in result.output
    if ok:
        assert result.exit_code == 0 and "none was asked (--duplicate-groups 0)" in out.read_text()
    else:
        assert result.exit_code == 2 and "Invalid value for '--duplicate-groups'" in result.stderr
        assert not out.exists()


def test_the_report_and_duplicates_share_one_default():
    from producer.report.duplicates import MAX_GROUPS
    from producer.report_cli import report as command

    assert next(p for p in command.params if p.name == "duplicate_groups").default == MAX_GROUPS


DUP_CHECK_SCRIPT = """<pre id="dupcheck">pending</pre><script>
(async () => {
  const images = [...document.querySelectorAll("#duplicates ~ .dup-group img")];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const groups = [...document.querySelectorAll(".dup-group")].map(g => ({
    group: g.dataset.group, title: g.querySelector("h3").textContent,
    figures: [...g.querySelectorAll("figure")].map(f => ({
      keeper: f.classList.contains("keeper"), mark: f.querySelector(".keeper-mark")?.textContent || "",
      width: f.querySelector("img")?.naturalWidth || 0, shown: f.getBoundingClientRect().width,
      top: Math.round(f.getBoundingClientRect().top)})),
  }));
  document.getElementById("dupcheck").textContent = JSON.stringify(groups);
})();
</script></body>"""


@needs_photos
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_the_duplicates_section_in_headless_chromium(alike_job, tmp_path):
    out = tmp_path / "report.html"
    written = write_report(alike_job.store, alike_job.id, str(out), alike_job.dump_root)
    check = tmp_path / "check.html"
    check.write_text(out.read_text().replace("</body>", DUP_CHECK_SCRIPT))
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", check.as_uri(), tmp_path=tmp_path).stdout
    groups = json.loads(html.unescape(re.search(r'<pre id="dupcheck">(.*?)</pre>', dom, re.S)[1]))
    assert len(groups) == written.duplicate_groups >= 2
    for group in groups:
        figures = group["figures"]
        assert [f["keeper"] for f in figures] == [True] + [False] * (len(figures) - 1)
        assert figures[0]["mark"] == "suggested keeper" and group["title"].startswith(f"Group {group['group']}: ")
        assert all(f["width"] > 0 and f["shown"] > 0 for f in figures)  # every thumbnail loaded and laid out
        assert len({f["top"] for f in figures}) == 1  # side by side, on one line

    shot = tmp_path / "duplicates.png"
    chromium("--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri() + "#duplicates",
             tmp_path=tmp_path)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape == (1400, 1280, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 100
    if os.environ.get("IMGQ_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["IMGQ_KEEP_SCREENSHOT"])
