"""The model registry's machinery: finding a model in a folder, the signing key, and the
conversion worker process. The service that records versions is ``services/models.py``."""
