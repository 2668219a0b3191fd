"""The ``cmdv`` entry point and the workstation commands (export, eval, demo, train, onnx, proxy, doctor)."""
