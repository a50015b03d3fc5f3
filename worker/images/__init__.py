"""Images: a file's bytes to the model's pixels, bounded by the header (formats, EXIF, limits, errors).

May import imgq only: it knows nothing of batches, runtimes or Redis.
"""
