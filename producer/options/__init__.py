"""Options: what the commands share (number types, paths, model and head choice, words).

May import imgq only.
"""
