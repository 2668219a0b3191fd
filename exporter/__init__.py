"""commandv.exporter — pyreft adapter import, layer mapping, translators, folding, pack export."""
