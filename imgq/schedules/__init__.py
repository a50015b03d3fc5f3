"""Schedules: folders scanned again and again (beat, ticks) and what each scan remembers of the files.

May import every other room of the shared package; only the commands and the worker's task import it.
"""
