"""Storage: where image bytes come from (local files today) and the rules for every file imgq opens or writes.

May import the contract only: every other room reads files through this one.
"""
