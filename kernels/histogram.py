"""Streaming histograms that merge exactly, whatever the split of the data.

The reference calibrators merge batch histograms by re-binning into the first batch's bin width, so
their thresholds depend on batch size, order and sharding. Here every histogram of a tensor lives on
a grid fixed by the data alone:

- a power-of-two bin count ``B`` (8192 by default);
- a range ``[-2**e, 2**e)`` (signed) or ``[0, 2**e)`` (every value seen non-negative), with ``e`` the
  smallest integer such that ``max|x| < 2**e``;
- value ``x`` falls in bin ``floor(x * B / 2**(e+1)) + B/2`` (signed) or ``floor(x * B / 2**e)``
  (non-negative). Scaling by a power of two is exact in binary floating point, so the bin of a value
  never depends on rounding.

Going from exponent ``e`` to ``e + d`` is then a right shift of every bin index by ``d``: sums of
aligned runs of ``2**d`` bins, exact in integers. A non-negative histogram at ``e`` becomes the
signed one at ``e`` by summing bin pairs into the upper half. Both the exponent (a function of
``max|x|``) and the signedness (``min < 0``) of the union are the maximum / logical or of the parts,
so merging any split in any order gives the histogram built from all the data at once, bit for bit.
Resolution: the data span at least ``B/4`` bins on each side of zero (``B/2`` when non-negative).

On a GPU, CuPy compiles every kernel with flush-to-zero: subnormal values (below 2**-126 in float32)
act as zero in float arithmetic. The extremes and the signs are therefore taken from the bits
(``exact_extremes``, ``negative``), so signedness and min/max are NumPy's; a subnormal then lands in
the bin next to zero on both devices. Only a tensor whose every value is below 2**-116 in magnitude
(where a subnormal's own bin is not next to zero) is binned differently on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, to_numpy
from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS, check_num_bins

# Exponent of a histogram whose values are all zero (or that holds none): below the exponent of any
# non-zero float64 magnitude (the smallest subnormal is 2**-1074), so it never wins a merge.
ZERO_EXPONENT = -1100
# Values binned at a time on the host: 256 KiB of float32 stays in cache (9 ms for 5e6 values against
# 27 ms in one pass, measured on the CI machine's Xeon).
HOST_CHUNK = 1 << 16


class NonFiniteValuesError(ValueError):
    """A tensor handed to a histogram holds NaN or infinite values."""

    def __init__(self, nan_count: int, inf_count: int) -> None:
        self.nan_count = nan_count
        self.inf_count = inf_count
        super().__init__(
            f"{nan_count} NaN and {inf_count} infinite values: a threshold cannot be calibrated on "
            "non-finite activations; check the model and the preprocessing of its inputs"
        )


def range_exponent(abs_max: float) -> int:
    """The smallest ``e`` with ``abs_max < 2**e`` (``ZERO_EXPONENT`` for zero)."""
    if abs_max == 0.0:
        return ZERO_EXPONENT
    return int(math.frexp(abs_max)[1])


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of one tensor's values on the data-fixed grid described in the module docstring.

    ``counts`` is an int64 NumPy or CuPy array; ``min``, ``max`` and ``count`` are exact and kept
    beside the counts because the naive method and the range checks need them.
    """

    counts: Any
    exponent: int
    signed: bool
    min: float
    max: float
    count: int

    @property
    def num_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def abs_max(self) -> float:
        if self.count == 0:
            return 0.0
        return max(-self.min, self.max)

    @property
    def bin_width(self) -> float:
        """Width of one bin; the signed grid spans twice the range with the same bin count."""
        log2_bins = self.num_bins.bit_length() - 1
        return math.ldexp(1.0, self.exponent + int(self.signed) - log2_bins)

    @classmethod
    def empty(cls, num_bins: int = DEFAULT_NUM_BINS, xp: Any = np) -> Histogram:
        check_num_bins(num_bins)
        return cls(xp.zeros(num_bins, dtype=xp.int64), ZERO_EXPONENT, False, math.inf, -math.inf, 0)

    @classmethod
    def of(cls, values: Any, num_bins: int = DEFAULT_NUM_BINS) -> Histogram:
        """The histogram of one batch of values (any shape, NumPy or CuPy, kept on its device)."""
        check_num_bins(num_bins)
        xp = array_module(values)
        flat = xp.asarray(values).ravel()
        if flat.dtype.kind != "f":
            flat = flat.astype(xp.float64)
        if flat.size == 0:
            return cls.empty(num_bins, xp)
        low, high = exact_extremes(flat)  # NaN or infinite extremes when any value is not finite
        if not (math.isfinite(low) and math.isfinite(high)):
            finite = xp.isfinite(flat)
            nan_count = int(xp.isnan(flat).sum())
            raise NonFiniteValuesError(nan_count, int((~finite).sum()) - nan_count)
        signed = low < 0.0
        exponent = range_exponent(max(-low, high))
        log2_bins = num_bins.bit_length() - 1
        shift = log2_bins - exponent - int(signed)
        offset = num_bins // 2 if signed else 0
        if xp is np:
            counts = _host_bin_counts(flat, shift, offset, num_bins)
        else:
            counts = xp.bincount(bin_index(flat, shift, offset), minlength=num_bins).astype(xp.int64)
        return cls(counts, exponent, signed, low, high, int(flat.size))

    def regridded(self, exponent: int, signed: bool) -> Histogram:
        """The same counts on a coarser (or equal) grid: exact, because bins only ever pair up."""
        if exponent < self.exponent or (self.signed and not signed):
            raise ValueError(
                f"cannot regrid a histogram of exponent {self.exponent} (signed={self.signed}) to a "
                f"finer grid (exponent {exponent}, signed={signed})"
            )
        xp = array_module(self.counts)
        counts = self.counts
        num_bins = self.num_bins
        log2_bins = num_bins.bit_length() - 1
        shift = exponent - self.exponent
        if signed and not self.signed:
            # [0, 2**e) with B bins -> upper half of [-2**e, 2**e) with B bins: pair up bins.
            half = counts.reshape(num_bins // 2, 2).sum(axis=1)
            counts = xp.concatenate([xp.zeros(num_bins // 2, dtype=xp.int64), half])
        if shift > 0:
            counts = _shift_right(counts, min(shift, log2_bins), signed, xp)
        return Histogram(counts, exponent, signed, self.min, self.max, self.count)

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both tensors' values together (commutative and associative, exactly)."""
        if self.num_bins != other.num_bins:
            raise ValueError(
                f"cannot merge histograms with {self.num_bins} and {other.num_bins} bins: every "
                "partial of a run must use the same num_bins"
            )
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        signed = self.signed or other.signed
        exponent = max(self.exponent, other.exponent)
        left = self.regridded(exponent, signed)
        right = other.regridded(exponent, signed)
        return Histogram(
            left.counts + right.counts,
            exponent,
            signed,
            min(self.min, other.min),
            max(self.max, other.max),
            self.count + other.count,
        )

    def to_host(self) -> Histogram:
        """A copy whose counts are a NumPy array (for Parquet, JSON and plots)."""
        return Histogram(to_numpy(self.counts), self.exponent, self.signed, self.min, self.max, self.count)

    def abs_counts(self) -> Any:
        """Counts of |x| on ``[0, 2**e)``: the negative half folded onto the positive half.

        Signed: ``bin_width`` bins, ``B/2`` of them; non-negative: the counts themselves.
        """
        if not self.signed:
            return self.counts
        half = self.num_bins // 2
        return self.counts[half:] + self.counts[:half][::-1]

    def same_as(self, other: Histogram) -> bool:
        """Bit-identical: same grid, same counts, same exact statistics."""
        return (
            self.num_bins == other.num_bins
            and self.exponent == other.exponent
            and self.signed == other.signed
            and self.count == other.count
            and (self.count == 0 or (self.min == other.min and self.max == other.max))
            and bool((to_numpy(self.counts) == to_numpy(other.counts)).all())
        )


def bin_index(flat: Any, shift: int, offset: int) -> Any:
    """Every value's bin, on any device. ldexp scales by a power of two exactly, so floor() sees the true position
    of every value; the one inexact case is a tiny value whose scaled magnitude underflows, where only
    its sign matters: a negative one must land just below zero (-1), not on -0.0."""
    xp = array_module(flat)
    scaled = xp.floor(xp.ldexp(flat, shift))
    if offset:
        scaled = xp.where(negative(flat) & (scaled == 0), -1.0, scaled)
    return scaled.astype(xp.int64) + offset


def _host_bin_counts(flat: np.ndarray, shift: int, offset: int, num_bins: int) -> np.ndarray:
    """The counts of ``bin_index`` for a float32 or float64 NumPy array, ``HOST_CHUNK`` values at a time.

    Whole-tensor temporaries cost more in page faults than in arithmetic (a fresh 40 MB index array
    takes 14 ns a value, the arithmetic 0.2), so the values pass through one reused cache-sized buffer.
    Multiplying by ``2**shift`` equals ldexp (both exact, rounding alike only where the product is
    subnormal) whenever ``2**shift`` is a normal number of the array's type; the offset is added in
    floating point, exact because every index is below ``num_bins`` (at most 2**16), far inside the
    type's integers. Only a downscale (``shift < 0``) can underflow a negative value to -0.0, so only
    then are those moved to -1 as on the device.
    """
    info = np.finfo(flat.dtype) if flat.dtype in (np.float32, np.float64) else None
    if info is None or not info.minexp <= shift <= info.maxexp - 1:
        return np.bincount(bin_index(flat, shift, offset), minlength=num_bins)
    factor = flat.dtype.type(math.ldexp(1.0, shift))
    counts = np.zeros(num_bins, dtype=np.int64)
    buffer = np.empty(min(HOST_CHUNK, flat.size), dtype=flat.dtype)
    for start in range(0, flat.size, HOST_CHUNK):
        part = flat[start : start + HOST_CHUNK]
        scaled = buffer[: part.size]
        np.multiply(part, factor, out=scaled)
        np.floor(scaled, out=scaled)
        if offset and shift < 0:
            scaled[(part < 0) & (scaled == 0)] = -1.0
        if offset:
            scaled += flat.dtype.type(offset)
        counts += np.bincount(scaled.astype(np.intp), minlength=num_bins)
    return counts


_ORDERED_INTS: dict[int, type[np.signedinteger[Any]]] = {2: np.int16, 4: np.int32, 8: np.int64}


def exact_extremes(flat: Any) -> tuple[float, float]:
    """The least and greatest of a float array, as NumPy finds them, on any device.

    CuPy compiles every kernel with flush-to-zero, so on a GPU a subnormal compares as zero: the
    minimum of [-1e-40, 1.0] there is -0.0, and a histogram of that tensor would turn non-negative.
    Integer keys that order like the floats (negative values with their magnitude bits flipped)
    make the device reduce integers instead, which nothing flushes."""
    xp = array_module(flat)
    if xp is np:
        return float(flat.min()), float(flat.max())
    int_type = _ORDERED_INTS[flat.dtype.itemsize]
    magnitude = np.iinfo(int_type).max
    bits = flat.view(int_type)
    keys = xp.where(bits < 0, bits ^ magnitude, bits)
    return _float_of_key(int(keys.min()), int_type, flat.dtype), _float_of_key(int(keys.max()), int_type, flat.dtype)


def negative(flat: Any) -> Any:
    """``flat < 0``, also for negative subnormals on a flush-to-zero device (sign bit set, not -0.0)."""
    xp = array_module(flat)
    if xp is np:
        return flat < 0
    int_type = _ORDERED_INTS[flat.dtype.itemsize]
    bits = flat.view(int_type)
    return (bits < 0) & (bits != np.iinfo(int_type).min)


def _float_of_key(key: int, int_type: Any, float_type: Any) -> float:
    bits = np.array(key, dtype=int_type)
    if key < 0:
        bits ^= np.iinfo(int_type).max
    return float(bits.view(float_type))


def merge_all(histograms: list[Histogram]) -> Histogram:
    """Merge the histograms of one tensor, in the order given (any order gives the same result)."""
    if not histograms:
        raise ValueError("merge_all needs at least one histogram")
    result = histograms[0]
    for histogram in histograms[1:]:
        result = result.merge(histogram)
    return result


def _shift_right(counts: Any, shift: int, signed: bool, xp: Any) -> Any:
    """Move every bin index ``i`` to ``i >> shift`` (signed: relative to the zero edge)."""
    num_bins = counts.shape[0]
    group = 1 << shift
    if not signed:
        if group >= num_bins:
            merged = xp.zeros(num_bins, dtype=xp.int64)
            merged[0] = counts.sum()
            return merged
        sums = counts.reshape(num_bins // group, group).sum(axis=1)
        return xp.concatenate([sums, xp.zeros(num_bins - sums.shape[0], dtype=xp.int64)])
    half = num_bins // 2
    merged = xp.zeros(num_bins, dtype=xp.int64)
    if group >= half * 2:
        merged[half - 1] = counts[:half].sum()
        merged[half] = counts[half:].sum()
        return merged
    sums = counts.reshape(num_bins // group, group).sum(axis=1)
    start = half - sums.shape[0] // 2
    merged[start : start + sums.shape[0]] = sums
    return merged
