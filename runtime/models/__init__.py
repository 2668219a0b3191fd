"""Model files: the offline zoo, model specs, fingerprints and GGUF metadata, chat templates."""
