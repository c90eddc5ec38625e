"""Datasets: samples, labels and annotations, imports and exports, published versions.

``service.py`` owns datasets, samples and labels; ``imports.py`` brings files in; ``versions/``
publishes immutable versions. ``formats.py``, ``images.py``, ``sources.py`` and ``storage.py`` hold
no database state: formats, image probing, safe sources (folders, zips) and the on-disk store.
"""
