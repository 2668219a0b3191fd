"""commandv.profiles — prompt sets, activation capture (HF and GGUF), profile store."""
