"""phm.runtime: text generation over exported artifacts (ONNX Runtime and TensorRT backends)."""
