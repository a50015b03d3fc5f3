"""Photos alike, the producer's side: thresholds calibrated on altered copies of a job's own photos
(calibrate.py) and the rows `imgq duplicates` writes (report.py); numpy and Pillow imported on use.

May import imgq only.
"""
