"""The ONNX Runtime engine: export folders, graph surgery, per-pass feeds, the engine."""
