"""Validation: INT8 against FP32 on labelled data, the accuracy gate and its sensitivity-ranked fallback."""
