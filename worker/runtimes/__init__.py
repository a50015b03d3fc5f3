"""Runtimes: what runs a model (TensorFlow, OpenVINO), behind base.ModelRuntime, and how one is chosen.

May import imgq and worker.images (input shape, preprocessing); imports TensorFlow and OpenVINO lazily.
"""
