"""Build, sign, verify and inspect model packages; the runtimes that load them."""

__version__ = "0.1.0"
