"""Text for a person to read: what a terminal is given of the names imgq did not choose (file and folder names,
labels, job and head names, Redis replies), without control characters.

A name may carry an escape sequence: ``ESC ] 0 ; ... BEL`` (OSC 0) retitles a terminal, ``ESC [ 2 J`` clears
it, and some terminals take U+009B for ``ESC [``. Every line the CLI (and a worker, when it refuses to start)
prints holding such a name goes through ``printable``. Machine formats never do: JSONL, CSV, Parquet and
``--json`` are data, written exactly (JSON escapes control characters anyway).
"""

from __future__ import annotations

import re

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udc9f]")
# C0 (tab and line ends included: a name holding a newline would print a line of its own), DEL, C1, and the
# bytes 0x80-0x9F of a file name that is not UTF-8, which Python holds as the surrogates U+DC80-U+DC9F and
# writes back as those bytes.


def printable(text: object) -> str:
    """``str(text)`` without control characters: C0, DEL and C1 (and their surrogate-escaped bytes)."""
    return CONTROL.sub("", str(text))
