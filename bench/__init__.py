"""imgq's benchmark: the bare model, Keras' per-image recipe and imgq end to end, on the same images.

``python -m bench FOLDER`` runs the scenarios and prints a table; ``python -m bench make-phone-photos SRC DST``
writes 12-megapixel test photos. See BENCHMARKS.md for the commands and the figures.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The tree whose imgq is measured: the benchmark's own checkout, whatever the venv's editable install points at.
