"""The Command-V transfer: layer map, translators, fold, pack export, transferability score."""
