"""Edge services: staged rollouts of a model version to devices, with health gates.

``plan.py`` cuts the targets into stages, ``gates.py`` reads the stage's per-version telemetry,
``engine.py`` is the state machine (a thread on the control plane, resumed from the database at
start), ``service.py`` is what the routes call (create, pause, resume, abort, roll back, history).
"""
