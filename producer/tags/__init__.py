"""Tags: XMP sidecars with a job's labels, for photo libraries.

May import imgq, producer.options and producer.exports.
"""
