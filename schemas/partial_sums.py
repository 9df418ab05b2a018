"""The data contract of a partial bias-correction file: one row per corrected layer of one shard.

The bias-correction pass writes these beside the partial histograms, one file per calibration
shard; the merge adds them up. The sums belong to one table of thresholds (the INT8 side quantizes
with them), so each file names that table's fingerprint and the merge refuses files of another.
"""

from __future__ import annotations

import pyarrow as pa

from int8flow.schemas.partial_histograms import FORMAT_KEY, FORMAT_VERSION_KEY

FORMAT_NAME = b"partial-bias-sums"
FORMAT_VERSION = b"1"

PARTIAL_SUMS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("table_sha256", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
        pa.field("exponent", pa.int32(), nullable=False),
        pa.field("fp32_sums", pa.list_(pa.int64()), nullable=False),
        pa.field("int8_sums", pa.list_(pa.int64()), nullable=False),
        pa.field("positions", pa.int64(), nullable=False),
    ],
    metadata={FORMAT_KEY: FORMAT_NAME, FORMAT_VERSION_KEY: FORMAT_VERSION},
)


class PartialSumsFileError(ValueError):
    """A partial bias-correction file is missing, unreadable, or of another run or table."""
