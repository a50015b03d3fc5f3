"""Storage: where bytes come from (ByteSource) and go (Destination), local or s3://; the rules of each file imgq opens.

May import the contract, and the settings (the s3 source reads IMGQ_S3_* where it is used): every other room
reads files through this one.
"""
