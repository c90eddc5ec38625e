"""The captured-samples contract (``protos.fleet_capture``): round trips and the shape checks."""

from __future__ import annotations

import pytest

from protos import fleet_capture as fc
from protos.fleet_state import (
    DesiredModel,
    DesiredState,
    decode_desired_state,
    encode_desired_state,
)


def _meta() -> fc.CaptureMeta:
    return fc.CaptureMeta(
        model="digits",
        version="2",
        reason=fc.LOW_CONFIDENCE,
        captured_at_ms=1_700_000_000_000,
        input_name="image",
        input_kind=fc.IMAGE,
        media_type="image/png",
        deployment_id="dep-1",
        top_k=(fc.Prediction(3, "three", 0.4), fc.Prediction(8, "eight", 0.35)),
    )


def test_a_record_splits_into_fixed_chunks_that_decode_back() -> None:
    data = bytes(range(256)) * (fc.CHUNK_BYTES // 256) * 2 + b"tail"
    chunks = list(fc.chunks_of("dev-1", data, _meta()))
    assert [c.index for c in chunks] == [0, 1, 2]
    assert all(c.count == 3 for c in chunks)
    decoded = [fc.decode_chunk(fc.encode_chunk(c)) for c in chunks]
    assert b"".join(c.data for c in decoded) == data
    assert decoded[0].meta == _meta()
    assert decoded[1].meta is None and decoded[2].data == b"tail"
    assert decoded[0].digest == fc.digest_of(data)
    assert max(len(fc.encode_chunk(c)) for c in chunks) <= fc.MAX_CHUNK_MESSAGE_BYTES
    # Resuming from a PARTIAL ack: only the chunks from next_index on.
    assert [c.index for c in fc.chunks_of("dev-1", data, _meta(), first=2)] == [2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"digest": "ABC"}, "lowercase hex"),
        ({"count": 2}, "chunks, not 2"),
        ({"data": b"short"}, "expected"),
        ({"meta": None}, "no meta"),
        ({"size": fc.MAX_RECORD_BYTES + 1}, "exceeds"),
    ],
)
def test_a_chunk_of_the_wrong_shape_is_refused(change: dict, message: str) -> None:
    data = b"x" * 1000
    chunk = next(fc.chunks_of("dev-1", data, _meta()))
    fields = {**chunk.__dict__, **change}
    with pytest.raises(ValueError, match=message):
        fc.decode_chunk(fc.encode_chunk(fc.CaptureChunk(**fields)))


def test_ack_control_and_status_round_trip() -> None:
    ack = fc.CaptureAck("a" * 64, fc.PARTIAL, 3, "missing")
    assert fc.decode_ack(fc.encode_ack(ack)) == ack
    ctl = fc.CaptureControl("dev-1", "purge-7", 123)
    assert fc.decode_control(fc.encode_control(ctl)) == ctl
    status = fc.CaptureStatus("dev-1", 2, 300, 9, 6, 1, "purge-7", 55)
    assert fc.decode_status(fc.encode_status(status)) == status
    with pytest.raises(ValueError, match="no state"):
        fc.decode_ack(b"\n@" + b"a" * 64)


def test_policy_from_a_manifest_block_and_through_the_desired_state() -> None:
    policy = fc.policy_from_dict({"below_confidence": 0.6, "on_request": True, "top_k": 3})
    assert policy.enabled and policy.active and policy.effective_top_k == 3
    assert not fc.policy_from_dict({"enabled": False, "sample_fraction": 1.0}).active
    for bad, message in [
        ({"below_confidence": "low"}, "must be a float"),
        ({"sample_fraction": 2.0}, r"not in \[0, 1\]"),
        ({"on_low": True}, "unknown field"),
    ]:
        with pytest.raises(ValueError, match=message):
            fc.policy_from_dict(bad)
    model = DesiredModel.of_chunks(
        deployment_id="dep-1",
        name="digits",
        version="2",
        package_digest="b" * 64,
        package_size=1,
        chunk_size=1,
        chunk_sha256=[b"c" * 32],
        capture=policy,
    )
    plain = DesiredModel.of_chunks(
        deployment_id="dep-1",
        name="other",
        version="1",
        package_digest="d" * 64,
        package_size=1,
        chunk_size=1,
        chunk_sha256=[b"e" * 32],
    )
    state = decode_desired_state(
        encode_desired_state(DesiredState("dev-1", 1, "dep-1", (model, plain)))
    )
    assert state.models[0].capture == policy
    assert state.models[1].capture is None  # unset: the package's own block applies
