"""A test-side device that speaks the capture contract (protos/fleet_capture.py) over a real
broker: it sends records in chunks on ``captures/up`` and reads the control plane's answers on
``captures/ack``. It plays the agent's uploader without being it, so each rule of the receiver
(exactly once by digest, gaps, bad digests) can be driven chunk by chunk."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from protos import fleet_capture as wire
from protos import fleet_topics as topics
from tests.control_plane.mqtt_probe import MqttProbe


def png(seed: int, size: tuple[int, int] = (28, 28), noise: bool = False) -> bytes:
    """A small grayscale PNG; ``noise`` makes it incompressible (a record of several chunks)."""
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    else:
        pixels = np.zeros(size, np.uint8)
        pixels[rng.integers(0, size[0]), :] = 255
        pixels[:, rng.integers(0, size[1])] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def meta(
    model: str = "mlp",
    version: str = "1",
    score: float = 0.4,
    label: str = "7",
    kind: str = wire.IMAGE,
    shadow: str | None = None,
    reason: str = wire.LOW_CONFIDENCE,
) -> wire.CaptureMeta:
    top = (wire.Prediction(int(label) if label.isdigit() else 0, label, score),)
    top += (wire.Prediction(1, "1", round(1 - score, 3)),)
    shadow_top = (wire.Prediction(int(shadow), shadow, 0.9),) if shadow else ()
    return wire.CaptureMeta(
        model=model,
        version=version,
        reason=wire.DISAGREEMENT if shadow else reason,
        captured_at_ms=int(time.time() * 1000),
        input_name="image" if kind == wire.IMAGE else "input",
        input_kind=kind,
        media_type="image/png" if kind == wire.IMAGE else wire.NPY_MEDIA_TYPE,
        deployment_id="dep-test",
        top_k=top,
        shadow_version="2" if shadow else "",
        shadow_top_k=shadow_top,
    )


@dataclass
class CaptureDevice:
    probe: MqttProbe
    device_id: str
    root: str = "edge"

    def __post_init__(self) -> None:
        self.probe.subscribe(topics.device_topic(self.device_id, wire.ACK, self.root))

    def send(
        self,
        data: bytes,
        m: wire.CaptureMeta,
        indexes: list[int] | None = None,
        digest: str | None = None,
    ) -> str:
        """Publish the record's chunks (all, or the ``indexes`` given); its digest."""
        chunks = list(wire.chunks_of(self.device_id, data, m, digest=digest))
        topic = topics.device_topic(self.device_id, wire.UP, self.root)
        for c in chunks:
            if indexes is None or c.index in indexes:
                self.probe.publish(topic, wire.encode_chunk(c))
        return chunks[0].digest

    def ack(self, digest: str, timeout: float = 15.0) -> wire.CaptureAck:
        """The next acknowledgement of ``digest`` (others are skipped)."""
        topic = topics.device_topic(self.device_id, wire.ACK, self.root)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.probe.expect_on(topic, left)
            ack = wire.decode_ack(msg.payload)
            if ack.digest == digest:
                return ack
        raise AssertionError(f"no acknowledgement of {digest[:12]} within {timeout} s")

    def quiet(self, window: float = 1.0) -> list[wire.CaptureAck]:
        """Acknowledgements that arrive within ``window`` s (for 'no answer yet')."""
        return [wire.decode_ack(m.payload) for m in self.probe.drain(window) if m.payload]

    def status(self, **counts: int) -> None:
        topic = topics.device_topic(self.device_id, wire.STATUS, self.root)
        status = wire.CaptureStatus(self.device_id, timestamp_ms=int(time.time() * 1000), **counts)
        self.probe.publish(topic, wire.encode_status(status), retain=True)


def as_device(port: int, bundle: dict) -> CaptureDevice:
    """A capture device on the broker with the device's own credentials (its ACL: it may write
    ``captures/up`` and read ``captures/ack`` of its own subtree only)."""
    mqtt = bundle["mqtt"]
    # The broker learns a new device's credentials with the next (coalesced) rewrite of its
    # files, a fraction of a second after the registration: retry as an agent does.
    deadline = time.monotonic() + 10
    while True:
        probe = MqttProbe(port, mqtt["username"], mqtt["password"], client_id=mqtt["client_id"])
        if probe.connect():
            return CaptureDevice(probe, bundle["device_id"])
        probe.close()
        assert time.monotonic() < deadline, "the broker never accepted the device's credentials"
        time.sleep(0.1)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
