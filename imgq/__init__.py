"""What the producer and the worker share: settings, the queue contract and the results store.

Nothing in this package imports TensorFlow.
"""
