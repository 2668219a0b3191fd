"""The engines that apply packs: shared request checks, sampling and protocol; llama.cpp, ONNX Runtime, torch."""
