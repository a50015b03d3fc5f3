"""The duplicates section of `imgq report`: the groups `imgq duplicates JOB` finds (producer/alike/find.py, the same
defaults, the same calibration, the same keeper), each group's thumbnails side by side, its tier named, each
member's similarity to the keeper, the suggested keeper marked.

Bounded: at most ``max_groups`` groups (in the order and with the numbers `imgq duplicates` gives them) of at most
MAX_MEMBERS members are shown, and the page says how many more there are. A job without embedding files (not
submitted with --embeddings) has no section, and the page says so in one line; so does a job whose threshold
cannot be calibrated here. Thumbnails are the cards' (previews.py); a member without a card (`imgq report
--group`) gets its own, made by the same code.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

from producer.report.previews import PreviewLimits, thumbnail

MAX_GROUPS = 50  # groups shown; the page says how many more the job has
MAX_MEMBERS = 24  # members shown per group (a chain of close pairs can make one group of hundreds)


@dataclass
class Section:
    """The section's HTML, how many groups the job has and how many were shown, what the calibration measured
    (lines for the user), and the thumbnails it made beyond the cards'."""

    html: str
    groups: int = 0
    shown: int = 0
    measured: list[str] = field(default_factory=list)
    thumbnails: int = 0


def duplicates_section(job: str, dump_root: str, folder: str, link: str, cards: dict[int, dict],
                       limits: PreviewLimits, max_groups: int = MAX_GROUPS) -> Section:
    """The section for ``job`` (its embedding files under ``dump_root``); thumbnails missing from ``cards``
    (image -> card) are written to ``folder``/thumbs/, linked under ``link``."""
    from imgq.alike.batchfile import BatchFileError
    from producer.alike.find import find
    from producer.alike.report import AlikeError, gather

    measured: list[str] = []
    try:
        rows = gather(dump_root, [job])
        found = find(rows, limits, say=measured.append)
    except (AlikeError, BatchFileError) as exc:
        return Section(_note(f"No duplicates section: {exc}"), measured=measured)
    groups: dict[int, list[dict]] = {}
    for member in found.members:
        groups.setdefault(member["group"], []).append(member)
    section = Section("", len(groups), min(len(groups), max_groups), measured)
    parts = [_intro(job, len(rows.job), found.threshold, found.trained, len(groups))]
    for number, members in list(groups.items())[:max_groups]:
        parts.append(_group(number, members, folder, link, cards, limits, section))
    if len(groups) > max_groups:
        more = len(groups) - max_groups
        parts.append(f"<p class=dup-more>{more} more group{'s' if more > 1 else ''} "
                     f"(imgq duplicates {html.escape(job)} lists them all).</p>")
    section.html = "".join(parts)
    return section


def _note(text: str) -> str:
    return f"<p class=dup-none>{html.escape(text)}</p>"


def _intro(job: str, photos: int, threshold: int, trained: bool, groups: int) -> str:
    tiers = "identical, same picture" + (", same moment" if trained else " (random weights: no same-moment tier)")
    found = (f"{groups} group{'s' if groups != 1 else ''} among {photos} photos" if groups
             else f"No photos alike among {photos}")
    return (f"<p class=dup-intro>{found}, as <code>imgq duplicates {html.escape(job)}</code> finds them (tiers: "
            f"{tiers}; same picture within {threshold} bits of perceptual hash, calibrated on this job's photos). "
            "The suggested keeper of each group, its largest file, is marked.</p>")


def _group(number: int, members: list[dict], folder: str, link: str, cards: dict[int, dict],
           limits: PreviewLimits, section: Section) -> str:
    keeper = next(m for m in members if m["keeper"])
    ordered = [keeper] + [m for m in members if not m["keeper"]]
    figures = "".join(_member(m, folder, link, cards, limits, section) for m in ordered[:MAX_MEMBERS])
    more = len(ordered) - MAX_MEMBERS
    tail = f"<p class=dup-more>and {more} more</p>" if more > 0 else ""
    shown = keeper["tier"].replace("_", " ")  # same_picture, as written in jsonl: "same picture" on the page
    return (f"<div class=dup-group data-group={number}><h3>Group {number}: {html.escape(shown)} "
            f"({len(members)} photos)</h3><div class=dup-row>{figures}</div>{tail}</div>")


def _member(member: dict, folder: str, link: str, cards: dict[int, dict], limits: PreviewLimits,
            section: Section) -> str:
    image, path = member["image"], member["path"]  # read_job decoded it with "replace": no surrogates left
    card = cards.get(image, {})
    if "t" not in card:
        card = _thumbnail(image, member["path"], folder, link, limits)
        section.thumbnails += "t" in card
    name = html.escape(f"#{image} {os.path.basename(path)}")
    if "t" in card:
        picture = (f'<img class=dup-thumb src="{html.escape(card["t"])}" width={card["w"]} height={card["h"]} '
                   f'alt="{html.escape(path)}" title="{html.escape(path)}">')
    else:
        picture = "<div class=none>no preview</div>"
    if member["keeper"]:
        caption, cls = "<span class=keeper-mark>suggested keeper</span>", "dup keeper"
    else:
        shown = member["tier"].replace("_", " ")
        caption, cls = f"{html.escape(shown)}, {member['similarity']:.4f} to the keeper", "dup"
    return (f"<figure class='{cls}' data-image={image}>{picture}<figcaption><span class=name>{name}</span><br>"
            f"{caption}</figcaption></figure>")


def _thumbnail(image: int, path: str, folder: str, link: str, limits: PreviewLimits) -> dict:
    """A card's thumbnail fields (``t, w, h``) for an image the cards did not show; {} when it has no preview."""
    picture = thumbnail(path, limits)
    if picture is None:
        return {}
    picture.save(os.path.join(folder, "thumbs", f"{image}.jpg"), "JPEG", quality=80)
    return {"t": f"{link}/thumbs/{image}.jpg", "w": picture.width, "h": picture.height}
