"""The one exception type of the scap package.

Every problem with a capture's bytes (bad magic, truncated block, absurd
length, inconsistent event parameters, broken gzip stream...) raises
`CaptureError`, which names the file, the byte offset and the block type, so
`svctrace read` can print one clear line and `--skip-corrupt` can resume at
the next valid block. Offsets of gzip files are offsets in the decompressed
stream (the file format's own offsets).
"""
from __future__ import annotations


class CaptureError(Exception):
    def __init__(self, file: str, offset: int, block_type: str, reason: str):
        self.file = file
        self.offset = offset
        self.block_type = block_type
        self.reason = reason
        super().__init__(f"{file}: {reason} (block {block_type} at byte offset {offset})")
