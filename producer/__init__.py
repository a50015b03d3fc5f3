"""The sending side of imgq: the `imgq` command line."""
