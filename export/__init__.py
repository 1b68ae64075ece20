"""phm.export: ONNX export, graph rewrite into PHM custom ops, INT8 and TensorRT engine building."""
