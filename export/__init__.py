"""Export in checked stages: PyTorch -> ONNX (FP32, FP16) -> TensorRT FP16, then Triton's model repository."""
