"""The consuming side of imgq: the Celery app, the ResNet50 model, decoding and batching."""
