"""Measuring a transfer: behavior evaluation, statistics, the fast proxy, diagnostics, pair reports."""
