"""Batch jobs: on-device predictions over local files, persisted so they survive restarts."""
