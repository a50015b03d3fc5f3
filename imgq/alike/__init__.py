"""Photos alike: the perceptual hash, the per-batch embedding files, close pairs found in blocks and the groups
of duplicates in tiers. numpy only: no TensorFlow, and no user's file opened here but the dump root's (and, for a
dump root in object storage, imgq's own cache of it under the state folder: cache.py).

May import imgq.contract and imgq.storage.
"""
