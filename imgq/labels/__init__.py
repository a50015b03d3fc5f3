"""Labels: the ImageNet class index, heads learned from examples, and the WordNet groups over labels.

May import the contract and imgq.storage (the file rules); nothing that talks to Redis.
"""
