"""The commandv version: ``from commandv.runtime.version import __version__`` (also ``commandv.runtime.__version__``).

A module of its own so that the pack writer can stamp it without importing the package ``__init__``, which
imports the pack module.
"""

__version__ = "0.1.0"
