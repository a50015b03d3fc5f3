"""The figures of one run as plain-text tables, each scenario against the issue's targets."""

from __future__ import annotations

RATIO_TARGETS = {"imagenet": (0.90, 3.0), "phone": (0.85, 4.0)}
# (imgq / bare, imgq / recipe) for ImageNet-size JPEGs and for 12 MP phone photos.
TINY_TARGET = 0.6  # imgq / bare for 200 jobs of one image
BF16_TARGET = 1.5  # bf16 / fp32, imgq end to end
LIMITS = {"startup": 15.0, "queue_100k": 10.0, "help": 0.5}  # seconds
RUNTIME_TARGETS = {"ov_photos": 1.15, "ov_bf16": 2.2, "ov_phone": 0.85}  # imgq / bare TensorFlow fp32
OWN_BARE_TARGET = 0.9  # imgq / the bare model of its own runtime and precision, ImageNet-size photos
OV_LIMITS = {"first_start": 15.0, "cached_start": 8.0, "peak_rss_mb": 1500.0}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _rate(results: dict, name: str) -> float | None:
    return (results.get(name) or {}).get("rate")


def scenario_rows(results: dict) -> list[list[str]]:
    """Rows: scenario, imgq, bare, recipe (images/s), imgq/bare, imgq/recipe, target, met."""
    bare, recipe = _rate(results, "bare"), _rate(results, "recipe")
    rows = []
    if "photos" in results:
        min_bare, min_recipe = RATIO_TARGETS[results["kind"]]
        imgq = _rate(results, "photos")
        # Without the recipe (the runtimes scenario alone), the row is judged on the bare model only.
        ok = (_ratio(imgq, bare) or 0) >= min_bare and (recipe is None or (_ratio(imgq, recipe) or 0) >= min_recipe)
        rows.append(_row(f"{results['kind']} fp32", imgq, bare, recipe,
                         f">= {min_bare} bare, >= {min_recipe:g} recipe", ok)
                    + [_others(results, "photos", "bare", "recipe")])
    if "tiny" in results:
        imgq = _rate(results, "tiny")
        rows.append(_row(f"tiny x{results['tiny']['images']}", imgq, bare, None,
                         f">= {TINY_TARGET} bare", (_ratio(imgq, bare) or 0) >= TINY_TARGET)
                    + [_others(results, "tiny", "bare")])
    if "bf16" in results:
        imgq, speedup = _rate(results, "bf16"), _ratio(_rate(results, "bf16"), _rate(results, "photos"))
        rows.append(_row("bf16", imgq, _rate(results, "bare_bf16"), recipe,
                         f">= {BF16_TARGET} x fp32 imgq: {_num(speedup)}", (speedup or 0) >= BF16_TARGET)
                    + [_others(results, "bf16", "photos", "bare_bf16")])
    return rows


def _others(results: dict, *names: str) -> str:
    """The largest share of the CPU other processes took during the measurements a row compares."""
    shares = [results[n].get("other_cpu") for n in names if n in results]
    shares = [x for x in shares if x is not None]
    return f"{max(shares):.0%}" if shares else "-"


def _row(name: str, imgq, bare, recipe, target: str, ok: bool | None) -> list[str]:
    return [name, _num(imgq, 1), _num(bare, 1), _num(recipe, 1), _num(_ratio(imgq, bare)),
            _num(_ratio(imgq, recipe)), target, _met(ok)]


def figure_rows(results: dict) -> list[list[str]]:
    """Rows: figure, value, target, met: start-up, memory, producer, decode and bf16 accuracy."""
    rows = []
    for key, label in (("worker", "fp32 worker"), ("worker_bf16", "bf16 worker")):
        if key in results:
            startup = results[key]["startup_seconds"]
            rows.append([f"{label} start-up to first heartbeat (s)", _num(startup, 1),
                         f"<= {LIMITS['startup']:g}", _met(startup <= LIMITS["startup"])])
            rows.append([f"{label} peak RSS, VmHWM (MB)", _num(results[key]["peak_rss_mb"], 0), "report", "-"])
    for key, label in (("photos", "fp32"), ("bf16", "bf16")):
        if key in results:
            run = results[key]
            rows.append([f"{label} worker decode / inference per image (ms, median)",
                         f"{_num(run['decode_ms_median'], 1)} / {_num(run['inference_ms_median'], 1)}", "", ""])
    for key, label in (("photos", "the images as one job"), ("tiny", "the tiny jobs, one submit() each")):
        if key in results:
            rows.append([f"producer: queueing {label} (s)", _num(results[key]["queue_seconds"]), "report", "-"])
    rows += _producer_rows(results) + _decode_rows(results) + _accuracy_rows(results) + _interference_rows(results)
    return rows


def _interference_rows(results: dict) -> list[list[str]]:
    """The share of the machine other processes (or the hypervisor) took while each rate was measured."""
    names = [n for n in ("bare", "recipe", "photos", "tiny", "bare_bf16", "bf16") if n in results]
    if not names or results[names[0]].get("other_cpu") is None:
        return []
    others = " / ".join(f"{results[n]['other_cpu']:.0%}" for n in names)
    steal = " / ".join(f"{results[n]['steal']:.0%}" for n in names)
    return [[f"CPU taken by other processes during {' / '.join(names)}", others, "~0%", ""],
            ["CPU stolen by the hypervisor, same phases", steal, "~0%", ""]]


def _producer_rows(results: dict) -> list[list[str]]:
    rows = []
    limit = LIMITS["queue_100k"]
    if "producer" in results:
        seconds = results["producer"]["seconds"]
        rows.append([f"queue {results['producer']['paths']:,} paths, submit() (s)", _num(seconds), f"<= {limit:g}",
                     _met(seconds <= limit)])
    if "cli_submit" in results:
        seconds = results["cli_submit"]["seconds"]
        rows.append(["same, `imgq submit` in a new process (s)", _num(seconds), f"<= {limit:g}",
                     _met(seconds <= limit)])
    if "help" in results:
        seconds = results["help"]["seconds"]
        rows.append(["`imgq --help`, best of 5 (s)", _num(seconds, 3), f"<= {LIMITS['help']:g}",
                     _met(seconds <= LIMITS["help"])])
    return rows


def _decode_rows(results: dict) -> list[list[str]]:
    if "decode" not in results:
        return []
    d = results["decode"]
    return [[f"decode 1 thread, Pillow: full / draft (ms/image, {d['images']} images)",
             f"{_num(d['full_ms'], 1)} / {_num(d['draft_ms'], 1)}", "", ""],
            ["decode 1 thread, worker's load_pixels: draft off / on (ms/image)",
             f"{_num(d['worker_load_pixels_ms'], 1)} / {_num(d.get('worker_load_pixels_draft_ms'), 1)}", "", ""]]


def _accuracy_rows(results: dict) -> list[list[str]]:
    acc = results.get("bf16_accuracy")
    if not acc:
        return []
    if acc.get("skipped"):
        return [["bf16 accuracy", "skipped", acc["skipped"], "-"]]
    return [
        ["bf16 vs fp32 logits: max / median relative error",
         f"{acc['max_relative_error']:.4f} / {acc['median_relative_error']:.4f}", "report", "-"],
        [f"bf16 vs fp32: top-1 / top-5 agreement ({acc['images']} images)",
         f"{acc['top1_agreement']:.3f} / {acc['top5_agreement']:.3f}", "report", "-"],
        ["distinct fp32 top-1 classes (random weights)", str(acc["distinct_top1_fp32"]), "", ""],
    ]


# (result, label, the bare model of its own runtime and precision, ImageNet-size or phone photos)
_RUNTIME_ROWS = (("bare_ov_fp32", "bare OpenVINO fp32", None, None),
                 ("bare_ov_bf16", "bare OpenVINO bf16", None, None),
                 ("bare_bf16", "bare TensorFlow bf16", None, None),
                 ("photos", "imgq TensorFlow fp32", "bare", "imagenet"),
                 ("phone", "imgq TensorFlow fp32", "bare", "phone"),
                 ("ov_photos", "imgq OpenVINO fp32", "bare_ov_fp32", "imagenet"),
                 ("ov_bf16", "imgq OpenVINO bf16", "bare_ov_bf16", "imagenet"),
                 ("ov_phone", "imgq OpenVINO fp32", "bare_ov_fp32", "phone"),
                 ("ov_bf16_phone", "imgq OpenVINO bf16", "bare_ov_bf16", "phone"))


def runtime_rows(results: dict) -> list[list[str]]:
    """Rows: what, photos, img/s, / bare TF fp32, / own bare, targets, met, others' CPU."""
    if "bare_ov_fp32" not in results:
        return []
    tf = _rate(results, "bare")
    rows = [["bare TensorFlow fp32", "", _num(tf, 1), "1.00", "", "", "", _others(results, "bare")]]
    for name, label, own, photos in _RUNTIME_ROWS:
        if name not in results:
            continue
        rate = _rate(results, name)
        vs_tf, vs_own = _ratio(rate, tf), _ratio(rate, _rate(results, own)) if own else None
        kind = results["kind"] if photos == "imagenet" else photos
        targets, ok = [], []
        if name in RUNTIME_TARGETS:
            targets.append(f">= {RUNTIME_TARGETS[name]} TF")
            ok.append((vs_tf or 0) >= RUNTIME_TARGETS[name])
        if photos == "imagenet":
            targets.append(f">= {OWN_BARE_TARGET} own")
            ok.append((vs_own or 0) >= OWN_BARE_TARGET)
        rows.append([label, kind or "", _num(rate, 1), _num(vs_tf), _num(vs_own), ", ".join(targets),
                     _met(all(ok)) if ok else "-", _others(results, name, "bare", *([own] if own else []))])
    return rows


def runtime_figure_rows(results: dict) -> list[list[str]]:
    rows = []
    if "ov_conversion_seconds" in results:
        rows.append([f"{results.get('runtime')}: conversion + compilation in the bench process (s)",
                     _num(results["ov_conversion_seconds"], 1), "report", "-"])
    for key, label, limit in (("worker_ov_first", "OpenVINO worker first start (converting)", "first_start"),
                              ("worker_ov", "OpenVINO worker start, cached conversion", "cached_start"),
                              ("worker_ov_bf16", "OpenVINO bf16 worker start, cached conversion", "cached_start")):
        if key in results:
            startup, rss = results[key]["startup_seconds"], results[key]["peak_rss_mb"]
            rows.append([f"{label} to first heartbeat (s)", _num(startup, 1), f"<= {OV_LIMITS[limit]:g}",
                         _met(startup <= OV_LIMITS[limit])])
            rows.append([f"{label}: peak RSS, VmHWM (MB)", _num(rss, 0), f"<= {OV_LIMITS['peak_rss_mb']:g}",
                         _met(rss <= OV_LIMITS["peak_rss_mb"])])
    for key in ("ov_photos", "ov_bf16", "ov_phone", "ov_bf16_phone", "phone"):
        if key in results:
            run = results[key]
            rows.append([f"{key}: worker decode / inference per image (ms, median)",
                         f"{_num(run['decode_ms_median'], 1)} / {_num(run['inference_ms_median'], 1)}", "", ""])
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the headers."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: dict) -> str:
    header = (f"{results['images']} images from {results['folder']} ({results['kind']}, median "
              f"{results['megapixels']:.1f} MP), batch size {results['batch_size']}, jpeg_draft "
              f"{results['jpeg_draft']}, commit {results['git']['commit']}")
    scenarios = table(["scenario", "imgq img/s", "bare img/s", "recipe img/s", "imgq/bare", "imgq/recipe",
                       "target", "met", "others' CPU"], scenario_rows(results))
    figures = table(["figure", "value", "target", "met"], figure_rows(results) + runtime_figure_rows(results))
    text = f"{header}\n\n{scenarios}\n\n{figures}\n"
    if runtime_rows(results):
        runtimes = table(["runtime", "photos", "img/s", "/ bare TF fp32", "/ own bare", "target", "met",
                          "others' CPU"], runtime_rows(results))
        phone = f", {results['phone_images']} phone photos from {results['phone_folder']}" if results.get(
            "phone_images") else ""
        text += f"\nRuntimes ({results.get('runtime')}{phone}):\n{runtimes}\n"
    return text
