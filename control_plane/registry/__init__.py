"""The model registry: model versions with lineage (``service.py``), their conversion
(``conversions.py`` runs ``worker.py`` as a child process), the signing key and the package store
(``packages/``)."""
