"""Models: which model classifies (built-ins and user model folders), its input, labels and layers.

May import the contract, the settings and imgq.labels; never TensorFlow, never imgq.results.
"""
