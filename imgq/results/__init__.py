"""Results: the store of jobs and records in Redis, the known-image index, the Parquet sink and packing.

May import the contract, keys, settings, imgq.storage and imgq.labels; never imgq.jobs or imgq.schedules.
"""
