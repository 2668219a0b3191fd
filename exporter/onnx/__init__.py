"""ONNX recipients: a llama / qwen2 decoder written as an ONNX graph, and its export."""
