"""The rule of a label imgq gives an image, one for a head's labels (imgq/labels/heads.py) and a model folder's
labels.txt (imgq/models/folder.py).

A label becomes an XMP keyword (producer/tags/), a CSV cell and a line on a terminal: no control characters
(C0, DEL, C1: they break sidecars and reach the terminal, where an OSC sequence retitles it), no '|'
(Lightroom's hierarchy separator), no ',' (keyword lists), no path separators, no leading or trailing space,
at most 100 characters.
"""

from __future__ import annotations

import re

LABEL = re.compile(r"[^\x00-\x1f\x7f-\x9f|,/\\]{1,100}")
SHOWN = 80  # characters of a refused label that a message quotes (a labels.txt line may be megabytes)


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a label, in one line quoting it (None: it can)."""
    if LABEL.fullmatch(label) and label == label.strip() and label not in (".", ".."):
        return None
    shown = label if len(label) <= SHOWN else label[:SHOWN] + "..."
    return (f"Expected a label of 1-100 characters without control characters, '|', ',', '/' or '\\', and no "
            f"leading or trailing space. Received: {shown!r}")
