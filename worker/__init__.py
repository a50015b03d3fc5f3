"""The consuming side of imgq: the Celery app and its task, the process state (worker.process), and its rooms:
images (decoding), runtimes (what runs the model), batches (one message to one record per image)."""
