"""Report: the HTML page of a job (records, previews, activation heatmaps).

May import imgq, producer.options and producer.exports.
"""
