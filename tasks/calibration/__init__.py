"""Calibration: activations into mergeable histograms, partial files, thresholds, calibration tables.

A new calibration method is a threshold function in ``int8flow.kernels.thresholds`` plus its name in
``int8flow.schemas.threshold_settings``; everything here is method-agnostic.
"""
