"""The llama.cpp engine: low-level bindings, the eval-callback editor, the engine."""
