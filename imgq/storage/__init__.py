"""Storage: where image bytes come from (local files, s3:// objects) and the rules for every file imgq opens or writes.

May import the contract, and the settings (the s3 source reads IMGQ_S3_* where it is used): every other room
reads files through this one.
"""
