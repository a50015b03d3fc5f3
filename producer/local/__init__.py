"""Local: `imgq classify` on this machine (its own worker and Redis), the progress bar, the wait for a job.

May import imgq, producer.options, producer.exports and producer.tags.
"""
