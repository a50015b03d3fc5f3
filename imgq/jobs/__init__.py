"""Jobs: submitting images as jobs of batches, the Celery queue they travel on, and their deliveries.

May import the contract, settings, imgq.storage, imgq.labels and imgq.results; never imgq.schedules.
"""
