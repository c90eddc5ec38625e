"""The device side of the fleet channel (MQTT, payloads from ``protos/fleet.proto``).

Modules, from the wire inwards:

* ``link.py``: the only module that touches paho-mqtt. One connection thread with its own jittered
  exponential backoff, a fresh paho client per connection (so nothing queued for a dead session
  is replayed into a new one), Last Will OFFLINE, retained ONLINE after CONNACK; events are handed
  to the agent's event loop.
* ``codec.py``: every ``fleet_pb2`` <-> plain dataclass mapping; the desired state goes through
  ``protos.fleet_state``, the module the control plane encodes it with.
* ``domain.py``: the device's plain types (``Result`` with its usual constructors, ``Reported``,
  chunk answers, telemetry records).
* ``downloads.py``: a package being pulled (``ChunkPuller``, a window of chunk requests in
  flight) into its state on disk (``ChunkDownload``, ``data_dir/fleet/downloads``); every chunk
  is verified and written atomically, so a restart or a broker cut resumes.
* ``outbox.py``: the bounded on-disk telemetry outbox (stdlib sqlite3).
* ``state.py``: what the device has acted on (generation, per-deployment results), atomically.
* ``client.py``: ``FleetClient``, the reconciler that ties them to the installer.

Nothing here runs before the agent serves: ``FleetClient.start`` only spawns a thread and tasks.
See docs/fleet.md, "Device side".
"""

from __future__ import annotations

from edge_agent.fleet.client import FleetClient

__all__ = ["FleetClient"]
