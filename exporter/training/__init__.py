"""Donor adapters: built-in behaviors, training data, pyreft training, generation with a live adapter."""
