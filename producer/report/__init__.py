"""Report: the HTML page of a job (records, previews, activation heatmaps, its photos alike).

May import imgq, producer.options, producer.exports and producer.alike (the duplicates section).
"""
