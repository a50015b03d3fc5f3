"""Exports: results written as JSONL, CSV, Parquet; embeddings and activation dumps read back.

May import imgq and producer.options.
"""
