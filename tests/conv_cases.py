"""Convolution geometries shared by the FP32, INT8 and CuPy kernel tests."""

from __future__ import annotations

CONV_FIELDS = ("case", "cin", "cout", "kernel", "strides", "pads", "dilations", "groups", "size")

# (id, input channels, output channels, kernel (kH, kW), strides, pads, dilations, groups, size (H, W))
CONV_CASES = [
    ("pointwise", 16, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (9, 11)),
    ("pointwise_stride2", 16, 8, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, (9, 11)),
    ("pointwise_k1100", 1100, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (4, 5)),
    ("stem_3x3_stride2", 3, 32, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1), 1, (32, 32)),
    ("conv3x3_k1170", 130, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (5, 6)),
    ("depthwise_3x3", 24, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 24, (28, 28)),
    ("depthwise_3x3_stride2", 12, 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 12, (15, 14)),
    ("depthwise_5x5", 12, 12, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 12, (14, 13)),
    ("depthwise_5x5_stride2", 12, 12, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 12, (14, 14)),
    ("depthwise_multiplier2", 6, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, (10, 10)),
    ("depthwise_dilated_asymmetric", 6, 6, (3, 3), (1, 2), (0, 2, 1, 0), (2, 1), 6, (12, 11)),
    ("grouped_2", 8, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, (10, 9)),
    ("dilation_2", 5, 7, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, (12, 12)),
    ("dilation_2_stride2", 5, 7, (3, 3), (2, 2), (1, 2, 2, 1), (2, 2), 1, (12, 13)),
    ("asymmetric_pads", 4, 6, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 1, (9, 8)),
    ("rectangular_kernel_strides", 4, 6, (2, 5), (3, 1), (1, 0, 0, 2), (1, 1), 1, (11, 12)),
]
CONV_IDS = [case[0] for case in CONV_CASES]
