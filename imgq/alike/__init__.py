"""Photos alike: the perceptual hash, the per-batch embedding files, close pairs found in blocks and the groups
of duplicates in tiers. numpy only: no TensorFlow, and no user's file opened here but the dump root's.

May import imgq.contract and imgq.storage.
"""
