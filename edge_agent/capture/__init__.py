"""Captured inputs (the data flywheel, device side): keep what the model was unsure about, send
it back for review.

Modules, from the serving path outwards:

* ``policy.py``: a version's policy (the deployment's ``DesiredModel.capture``, else the
  package manifest's ``capture`` block) resolved once, and the per-request decision (top-1 below
  ``below_confidence``, a random ``sample_fraction``, the client's ``capture: true`` with
  ``on_request``; ``on_disagreement`` is decided on shadow comparisons).
* ``capturer.py``: ``Capturer``, what the data plane calls after every answered request and
  shadow comparison; hands what it keeps to
* ``writer.py``: a bounded queue and one thread (full: skipped and counted, never waited on),
  which builds each record (``record.py``: the input as received, its ``CaptureMeta``) and puts
  it into
* ``store.py``: the bounded on-disk store (``data_dir/captures``; fsync + rename, quotas with
  the oldest dropped and counted, purge once per id);
* ``uploader.py``: ``CaptureUploader``, which the fleet client runs: chunks on ``captures/up``,
  deletion only on an ack, resends, purges, ``captures/stat``.

See edge_agent/README.md ("Captured inputs") and docs/fleet.md for the wire contract.
"""

from __future__ import annotations

from edge_agent.capture.capturer import Capturer, Override

__all__ = ["Capturer", "Override"]
