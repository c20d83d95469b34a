"""The one exception type of the scap package.

Every problem with a capture's bytes (bad magic, truncated block, absurd
length, inconsistent event parameters, broken gzip stream...) raises
`CaptureError`, which names the file, the byte offset and the block type, so
`svctrace read` can print one clear line and `--skip-corrupt` can resume at
the next valid block. Offsets of gzip files are offsets in the decompressed
stream (the file format's own offsets), and the message says so: a user who
looks at the file with `xxd -s` must decompress it first.
"""
from __future__ import annotations


class CaptureError(Exception):
    def __init__(self, file: str, offset: int, block_type: str, reason: str, decompressed: bool = False):
        self.file = file
        self.offset = offset
        self.block_type = block_type
        self.reason = reason
        self.decompressed = decompressed  # offset in the decompressed stream of a gzip file
        where = f"byte offset {offset} of the decompressed stream" if decompressed else f"byte offset {offset}"
        super().__init__(f"{file}: {reason} (block {block_type} at {where})")

    @property
    def at_the_end(self) -> bool:
        """The damage is where the bytes ran out (an interrupted capture, a cut copy, a broken gzip
        stream, which nothing can be read past): everything before it was read."""
        return self.reason.startswith("truncated block") or self.block_type == "gzip"
