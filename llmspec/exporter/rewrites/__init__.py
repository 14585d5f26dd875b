"""Rewrites of exported ONNX graphs: ONNX Runtime's transformer optimizer and our own pattern
passes (attention and rotary fusion, MatMul packing) on onnx-ir."""
