"""The model graph: ONNX in, a small IR, simplification passes, executors, quantization, exports."""
