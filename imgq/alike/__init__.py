"""Photos alike: the perceptual hash, the per-batch embedding files, close pairs found in blocks and the groups
of duplicates in tiers. numpy only: no TensorFlow; no file opened but the dump root's and its cache (cache.py).

May import imgq.contract and imgq.storage.
"""
