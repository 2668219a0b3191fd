"""The behavior-pack file: the data model, its GGUF keys and reader/writer, signing, load policy, index."""
