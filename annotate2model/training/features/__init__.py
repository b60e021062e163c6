"""Features: backbones and their weights, images to model input, the device, the embedding cache
and extraction (torch, or ONNX Runtime on the trunk's `torch.onnx.export`), safetensors I/O."""
