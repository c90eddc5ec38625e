"""The registry's signing keys and their rotation (``service.py``)."""
