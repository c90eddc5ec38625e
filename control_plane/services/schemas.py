"""Request and response bodies of services."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from control_plane.core.schemas import OrmModel
from control_plane.deployments.schemas import GuardSpec, WarmupSpec

#: Path segments under ``/services`` that are not service names.
RESERVED_NAMES = ("inputs",)
ServiceName = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$")


class ServiceModel(BaseModel):
    """A registered model version the service serves (by its registry name).

    An online service may list several versions of one model, each with a ``weight``: the
    percentage of the requests that name no version it answers (a request naming a version goes
    to it). The first version listed of a model is its active one (what the replicas load as the
    model's default, the others stand by beside it), so changing only the weights never changes
    which version is active, and a 0/100 split still answers from a version every replica holds.
    """

    model: str = Field(min_length=1, max_length=128, description="Registered model name.")
    version: str = Field(min_length=1, max_length=128)
    weight: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Online services, several versions of one model: the percentage of the "
        "requests naming no version this one answers; the weights of a model sum to 100. "
        "Optional (100) when the model has one version.",
    )
    max_batch_size: int = Field(
        1, ge=1, le=1024, description="Dynamic batching: the largest batch (1 = off)."
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=1000, description="How long a request may wait for others to batch with."
    )


class BatchInput(BaseModel):
    """What a batch service predicts over: one split of a published dataset version, or an
    uploaded input (``POST /services/inputs``: a zip of images / ``.npy`` / tensor JSONL files)."""

    dataset_id: str | None = Field(None, min_length=1, max_length=64)
    dataset_version: str | None = Field(None, min_length=1, max_length=16, description="e.g. V001")
    split: Literal["validation", "train", "all"] | None = Field(
        None, description="Of the dataset version: validation (default), train or all."
    )
    upload: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The id (sha256) of an uploaded batch input, instead of a dataset version.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        dataset = self.dataset_id is not None or self.dataset_version is not None
        if self.upload is not None:
            if dataset or self.split is not None:
                raise ValueError("input: either upload, or dataset_id + dataset_version + split")
            return self
        if self.dataset_id is None or self.dataset_version is None:
            raise ValueError("input: dataset_id and dataset_version (or an upload id)")
        if self.split is None:
            self.split = "validation"
        return self

    def stored(self) -> dict[str, Any]:
        """The fields of its kind only (as the service's spec keeps it and shows it again)."""
        if self.upload is not None:
            return {"upload": self.upload}
        return self.model_dump(exclude={"upload"})


class InputUpload(BaseModel):
    """An uploaded batch input, stored by its sha256."""

    id: str = Field(description="sha256 of the uploaded file; the batch service's input.upload.")
    filename: str = Field(description="The uploaded file's name.")
    files: int = Field(description="Files holding inputs.")
    count: int = Field(description="Inputs: one per image or .npy file, one per JSONL line.")
    created_at: dt.datetime


class DetectionOutputs(BaseModel):
    """How to read boxes from a detection model's outputs, for a batch over a detection version.

    Per input: ``boxes`` [1, K, 4], ``scores`` [1, K] and ``classes`` [1, K] (an index into
    ``labels``), the usual layout of exported detectors (after their own non-max suppression).
    """

    boxes: str = Field("boxes", min_length=1, description="Output holding the K boxes.")
    scores: str = Field("scores", min_length=1, description="Output holding the K scores.")
    classes: str = Field("classes", min_length=1, description="Output holding K label indexes.")
    box_format: Literal["xyxy", "xywh"] = Field(
        "xyxy", description="Corners (x0, y0, x1, y1), or corner and size (x, y, w, h)."
    )
    normalized: bool = Field(
        True, description="Coordinates as fractions of the image's width and height (else pixels)."
    )
    labels: list[str] | None = Field(
        None, description="Class index -> label. Default: the version's labels, sorted."
    )
    score_threshold: float = Field(0.0, ge=0, le=1, description="Detections below are ignored.")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU from which a box matches.")


Share = Annotated[
    int | str,
    Field(description='A device count (e.g. 1) or a percentage of the targets (e.g. "25%").'),
]


class EdgeTargets(BaseModel):
    """The devices an edge service runs on: a fixed list, or a label selector that stays live
    (a device registered or relabelled later joins, one that stops matching leaves)."""

    device_ids: list[str] | None = Field(None, min_length=1, max_length=10000)
    selector: dict[str, str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.device_ids is None) == (self.selector is None):
            raise ValueError("targets: give exactly one of device_ids, selector")
        return self


class RolloutStrategy(BaseModel):
    """Stages: a canary, then waves; each stage bakes before its gates decide."""

    canary: Share = 1
    waves: list[Share] = Field(
        default_factory=lambda: ["100%"],
        max_length=20,
        description="Cumulative: each wave brings the total to this share; the last one "
        "always ends with every target.",
    )
    bake_s: float = Field(60.0, ge=0, le=7 * 86400, description="Bake time of every stage.")

    @model_validator(mode="after")
    def _shares(self) -> Self:
        for share in [self.canary, *self.waves]:
            parse_share(share)
        return self


class HealthGates(BaseModel):
    """Checked on a stage's devices from their per-version telemetry while it bakes. Unknown
    fields are refused: a misspelt limit taken as absent would leave its default in force."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(0.01, ge=0, le=1, description="errors / requests at most.")
    max_p99_ms: float | None = Field(None, gt=0, description="p99 latency at most (ms).")
    max_p99_ratio: float | None = Field(
        None, gt=0, description="p99 at most k x the previous version's on the same devices."
    )
    min_requests: int = Field(
        0, ge=0, description="Requests the stage must have answered before it can pass."
    )
    require_online: bool = Field(True, description="Every device of the stage stays online.")


class CaptureSpec(BaseModel):
    """What the service's devices keep of their inputs for review (the data flywheel), and the
    dataset the captures land in. Sent to each device with the version (``DesiredModel.capture``,
    protos/fleet_capture.proto), over the package's own ``capture`` block.

    Unknown fields are refused: the block replaces the previous one whole, so a misspelt field
    taken as absent would quietly turn its trigger off."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    below_confidence: float = Field(
        0.0, ge=0, le=1, description="Capture when the top-1 score is below this (0: off)."
    )
    sample_fraction: float = Field(
        0.0, ge=0, le=1, description="Capture this share of requests at random (0: off)."
    )
    on_disagreement: bool = Field(
        False, description="Capture when a shadow version's top-1 differs from the active one's."
    )
    on_request: bool = Field(
        False, description="Capture when the client asks (request parameter `capture: true`)."
    )
    top_k: int = Field(0, ge=0, le=100, description="Top classes a record keeps (0: 5).")
    dataset: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The dataset captures land in, by name (created on first capture). "
        "Default: `<model>-captures`, with the model's labels.",
    )


def parse_share(share: int | str) -> tuple[int, float]:
    """(count, 0) or (0, fraction); ``ValueError`` for anything else."""
    if isinstance(share, int):
        if share < 1:
            raise ValueError(f"a device count must be at least 1, got {share}")
        return share, 0.0
    text = share.strip()
    if not text.endswith("%"):
        raise ValueError(f"{share!r}: give a count or a percentage such as '25%'")
    pct = float(text[:-1])
    if not 0 < pct <= 100:
        raise ValueError(f"{share!r}: a percentage is in (0, 100]")
    return 0, pct / 100


#: Settings that only mean something for a service that keeps serving requests.
_ONLINE_ONLY_MODEL_FIELDS = ("max_batch_size", "max_queue_delay_ms", "weight")


def check_versions(models: list[ServiceModel]) -> None:
    """Several versions of one model: each named once, all with weights summing to 100, the
    batching settings given on the first (active) one only (a model has one batching queue).
    ``ValueError`` with the reason otherwise."""
    by_model: dict[str, list[ServiceModel]] = {}
    for m in models:
        by_model.setdefault(m.model, []).append(m)
    for name, versions in by_model.items():
        numbers = [m.version for m in versions]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"model {name}: each version once")
        if len(versions) == 1:
            weight = versions[0].weight
            if weight is not None and weight != 100:
                raise ValueError(f"model {name}: one version takes every request (weight 100)")
            continue
        if any(m.weight is None for m in versions):
            raise ValueError(f"model {name}: give every version of it a weight (0-100)")
        total = sum(m.weight or 0 for m in versions)
        if total != 100:
            raise ValueError(f"model {name}: the weights of its versions sum to {total}, not 100")
        batching = ("max_batch_size", "max_queue_delay_ms")
        if any(f in m.model_fields_set for m in versions[1:] for f in batching):
            raise ValueError(
                f"model {name}: batching settings go on its first (active) version only"
            )


class ServiceCreate(BaseModel):
    name: str = ServiceName
    type: Literal["online", "batch", "edge"] = "online"
    models: list[ServiceModel] = Field(min_length=1, max_length=16)
    replicas: int = Field(1, ge=1, le=16, description="Agent processes serving it.")
    input: BatchInput | None = Field(
        None, description="Batch services only: the dataset version split to predict over."
    )
    targets: EdgeTargets | None = Field(None, description="Edge services only: the devices.")
    strategy: RolloutStrategy | None = Field(
        None, description="Edge services only: canary, waves, bake time."
    )
    gates: HealthGates | None = Field(None, description="Edge services only: health gates.")
    guard: GuardSpec | None = Field(
        None, description="Edge services only: each device's own guard after activation."
    )
    warmup: WarmupSpec | None = Field(
        None, description="Edge services only: shadow warm-up on each device before activation."
    )
    capture: CaptureSpec | None = Field(
        None, description="Edge services only: what devices capture for review, and where it lands."
    )
    detection: DetectionOutputs | None = Field(
        None,
        description="Batch services over a detection version: how to read the model's boxes; "
        "the service then reports mAP, per-label AP, precision and recall.",
    )
    device: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Batch services only: run the job on this registered device (over the fleet "
        "channel) instead of a cloud replica. The device must run the model version.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        """``/services/inputs`` is the batch inputs' collection, so no service may be named so."""
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved")
        return name

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        """Refuse fields of the other type rather than silently ignore them: a batch request
        asking for replicas or dynamic batching would otherwise get something it did not ask."""
        edge_fields = [
            f
            for f in ("targets", "strategy", "gates", "guard", "warmup", "capture")
            if getattr(self, f) is not None
        ]
        if self.type == "edge":
            if self.targets is None:
                raise ValueError("an edge service needs targets (device_ids or selector)")
            if len(self.models) != 1:
                raise ValueError("an edge service rolls out one model version")
            if self.models[0].weight is not None:
                raise ValueError("weight is for online services serving several versions")
            batch_only = self.input, self.device, self.detection
            if any(f is not None for f in batch_only) or "replicas" in self.model_fields_set:
                raise ValueError("input, device, detection and replicas are not for edge services")
            return self
        if edge_fields:
            raise ValueError(f"{', '.join(edge_fields)}: edge services only (type: edge)")
        if self.type == "online":
            check_versions(self.models)
            if self.input is not None:
                raise ValueError("input is for batch services (type: batch)")
            if self.device is not None:
                raise ValueError("device is for batch services (type: batch)")
            if self.detection is not None:
                raise ValueError("detection is for batch services (type: batch)")
            return self
        if self.input is None:
            raise ValueError(
                "a batch service needs an input (dataset_id, dataset_version, split; or upload)"
            )
        if len(self.models) != 1:
            raise ValueError("a batch service runs exactly one model version")
        if "replicas" in self.model_fields_set:
            raise ValueError("replicas is for online services; a batch service runs on one")
        given = [f for f in _ONLINE_ONLY_MODEL_FIELDS if f in self.models[0].model_fields_set]
        if given:
            raise ValueError(f"{', '.join(given)}: online services only")
        return self


class ServiceUpdate(BaseModel):
    """A new set of model versions or weights (rolled out one replica at a time), and for an
    edge service a new ``capture`` block (sent to its devices at once); at least one."""

    models: list[ServiceModel] | None = Field(None, min_length=1, max_length=16)
    capture: CaptureSpec | None = Field(
        None,
        description="Edge services only: the new capture block, replacing the old one whole "
        '(`{"enabled": false}` turns capture off). Sent to the devices with the versions they '
        "run, without a new rollout.",
    )

    @model_validator(mode="after")
    def _versions(self) -> Self:
        if self.models is None and self.capture is None:
            raise ValueError("give models, capture, or both")
        if self.models is not None:
            check_versions(self.models)
        return self


class ReplicaPublic(OrmModel):
    index: int
    device_id: str
    state: str = Field(description="starting | running | crashed | stopped")
    reason: str
    pid: int | None
    grpc_address: str | None = None
    http_address: str | None = None
    restarts: int
    generation: int = Field(description="The service generation this replica was last given.")
    installed: bool = Field(
        False, description="Every model of the replica's generation is installed and active."
    )
    started_at: dt.datetime | None


class BatchProgress(BaseModel):
    """The agent job of a batch service, as last seen."""

    job_id: str = ""
    state: str = Field("", description="the agent job's QUEUED | RUNNING | SUCCEEDED | FAILED")
    total: int = 0
    done: int = 0
    failed: int = Field(0, description="Inputs whose row holds an error.")


class ClassMetrics(BaseModel):
    label: str
    support: int = Field(description="Rows whose true label is this one.")
    predicted: int = Field(description="Rows predicted as this label.")
    precision: float | None = Field(description="null when nothing was predicted as it.")
    recall: float | None = Field(description="null when no row has it as its true label.")


class Evaluation(BaseModel):
    """How the predictions compare with the dataset's labels (image classification)."""

    total: int = Field(description="Labeled rows; a row that failed counts as wrong.")
    correct: int
    errors: int = Field(description="Labeled rows without a prediction (their input failed).")
    accuracy: float | None
    labels: list[str] = Field(description="The confusion matrix's row and column order.")
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]] = Field(
        description="[true][predicted] counts over the rows that have a prediction."
    )


class DetectionClassMetrics(BaseModel):
    label: str
    support: int = Field(description="True boxes of this label.")
    detections: int = Field(description="Boxes the model gave this label.")
    true_positives: int = Field(description="Detections matched to a true box (IoU >= threshold).")
    precision: float | None = Field(description="null when the model never detected it.")
    recall: float | None = Field(description="null when no image has a true box of it.")
    ap: float | None = Field(
        description="Average precision (all-point interpolated); null without true boxes."
    )


class DetectionEvaluation(BaseModel):
    """How detected boxes compare with the dataset's boxes (object detection)."""

    iou_threshold: float = Field(description="A detection matches a true box from this IoU on.")
    images: int
    errors: int = Field(description="Images whose input failed: their boxes count as missed.")
    boxes: int = Field(description="True boxes over all images.")
    detections: int
    true_positives: int
    precision: float | None
    recall: float | None
    mean_ap: float | None = Field(
        description="mAP at the IoU threshold: mean AP over the labels that have true boxes."
    )
    labels: list[str]
    per_class: list[DetectionClassMetrics]


class ResultRow(BaseModel):
    """One input of a batch service and what the model said of it."""

    index: int
    source: str = Field(
        description="The sample's path in the dataset version folder, or the file's in the "
        "upload (``x.jsonl#3``: line 3 of a tensor JSONL)."
    )
    label: str | None = Field(None, description="The dataset's label, when it has one.")
    predicted: str | None = None
    score: float | None = None
    top_k: list[dict[str, Any]] | None = None
    detections: list[dict[str, Any]] | None = Field(
        None, description="Detection batches: ``[{label, score, x, y, w, h}]`` in pixels."
    )
    error: str | None = None


class ResultPage(BaseModel):
    total: int
    offset: int
    items: list[ResultRow]


class ServicePublic(BaseModel):
    name: str
    type: str
    state: str = Field(
        description="deploying | running | failed | stopped; a batch service ends succeeded "
        "or failed"
    )
    reason: str
    models: list[ServiceModel]
    generation: int
    replicas: list[ReplicaPublic]
    grpc_addresses: list[str] = Field(
        description="Each running replica's OIP v2 gRPC address (tritonclient.grpc)."
    )
    input: BatchInput | None = None
    device: str | None = Field(None, description="The device a batch service runs on.")
    batch: BatchProgress | None = None
    evaluation: Evaluation | None = None
    detection_evaluation: DetectionEvaluation | None = None
    targets: EdgeTargets | None = None
    capture: CaptureSpec | None = Field(None, description="Edge services: the capture block.")
    rollout: RolloutPublic | None = Field(None, description="Edge services: the latest rollout.")
    owner: str | None = Field(
        None,
        description="With several control-plane replicas: the replica id that runs this "
        "service's agents (another takes over when its heartbeat stops).",
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class ReplicaVersionFigures(BaseModel):
    """One version on one replica, from its newest ``metrics`` telemetry records."""

    device_id: str
    requests: int = Field(description="Requests since the version was loaded on the replica.")
    errors: int = Field(description="Of those, failed ones (bad input included).")
    window: int = Field(description="Successful requests in the interval p50 / p99 cover.")
    p50_ms: float | None
    p99_ms: float | None
    at: dt.datetime | None = Field(description="When the newest record was taken (agent clock).")


class VersionComparison(BaseModel):
    baseline: str = Field(description="The version compared with.")
    error_rate_delta: float | None = Field(description="error_rate - the baseline's.")
    p50_ratio: float | None = Field(description="p50_ms / the baseline's.")
    p99_ratio: float | None = Field(description="p99_ms / the baseline's.")


class VersionFigures(BaseModel):
    """A model version's request figures over the service's replicas."""

    model: str
    version: str
    serving: bool = Field(description="The spec serves this version now (any weight).")
    weight: int | None = Field(
        None, description="Its weight in the spec (online services serving several versions)."
    )
    requests: int = Field(description="Summed over replicas.")
    errors: int
    error_rate: float | None = Field(description="errors / requests; null before any request.")
    p50_ms: float | None = Field(description="The slowest replica's latest p50.")
    p99_ms: float | None = Field(description="The slowest replica's latest p99.")
    replicas: list[ReplicaVersionFigures]
    vs_baseline: VersionComparison | None = None


class ServiceVersions(BaseModel):
    service: str
    telemetry_interval_s: float = Field(description="How often replicas send their figures.")
    items: list[VersionFigures]


class GateResult(BaseModel):
    gate: str = Field(description="installs | online | error_rate | p99_ms | p99_ratio | traffic")
    passed: bool
    value: float | None = None
    limit: float | None = None
    detail: str = ""


class StagePublic(BaseModel):
    name: str = Field(description="canary | wave-1 | wave-2 | ...")
    devices: list[str]
    state: str = Field(
        description="pending | deploying | baking | passed | failed | rolled_back | skipped"
    )
    deployment_id: str = ""
    previous: dict[str, str | None] = Field(
        default_factory=dict, description="Each device's active version before the stage."
    )
    gates: list[GateResult] = Field(default_factory=list)
    device_states: dict[str, str] = Field(
        default_factory=dict, description="Each device's deployment state."
    )
    rollback_deployments: list[str] = Field(default_factory=list)


class RolloutPublic(OrmModel):
    id: str
    number: int
    model: str
    version: str
    package_digest: str
    state: str = Field(
        description="running | paused | succeeded | failed | aborted | rolled_back | superseded"
    )
    reason: str
    stage: int
    stages: list[StagePublic] = Field(default_factory=list)
    joined: dict[str, str] = Field(
        default_factory=dict,
        description="Devices that joined the selector after planning, and what they were given.",
    )
    left: list[str] = Field(default_factory=list)
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


ServicePublic.model_rebuild()
