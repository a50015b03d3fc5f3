"""Batches: one batch message to one record per image (decode, the known-image index, the forward pass).

May import imgq, worker.images and worker.runtimes.base; the process state (worker.process) for types only.
"""
