"""Run a package's ModelArts ``customize_service.py`` hooks (``_preprocess`` / ``_postprocess``).

Teams moving from Huawei ModelArts already have their request handling in a
``customize_service.py``; re-writing it as a manifest declaration would be a second, drifting copy
of the same logic. ``model-packager convert`` therefore carries the handler's source inside the
signed manifest, and this module executes it, on the device, around the packaged model.

Trust model (no more than this): the loader admits a handler only when the agent's settings say
``allow_python_handlers`` and the package is signed by a trusted key. Once admitted, the hooks are
ordinary Python in the agent's process, with its permissions; there is no sandbox. "Isolated"
below means only that every package gets its own module object (no shared globals, nothing left in
``sys.modules``), not that the code is confined.

Request mapping, following the ModelArts convention for ``_preprocess(self, data)``:

- one BYTES input per file field (the input's name is the form field, e.g. ``images``; each
  element one file) -> ``{field: {"<field>_<i>": file-like}}``;
- a single BYTES input ``request`` holding one JSON document -> the parsed JSON, as ModelArts
  passes a JSON body.

``_preprocess`` returns ``{model input name: array}``; the agent runs the model and passes its
outputs to ``_postprocess`` as ``{output name: nested lists}`` (ModelArts' TF-Serving base class
hands ``tolist()`` values, so handlers written for it keep working). Whatever ``_postprocess``
returns goes back as JSON in a BYTES output ``response``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from edge_agent.errors import InferenceFailed, InvalidInput
from model_packager.processing import PythonHandler
from model_packager.tensors import TensorSpec, datatype_to_dtype

log = logging.getLogger(__name__)

JSON_INPUT = "request"
RESPONSE_OUTPUT = "response"


class HandlerLoadError(Exception):
    """The handler source does not import, or declares no usable service class."""


class SingleNodeService:
    """Stand-in for ModelArts' ``model_service.model_service.SingleNodeService``.

    ModelArts' real base classes talk to a TF-Serving process; here the agent runs the model, so
    the stand-in only keeps the constructor's attributes and identity hooks that handlers rely on.
    """

    def __init__(self, model_name: str, model_path: str) -> None:
        self.model_name = model_name
        self.model_path = model_path
        self.model_inputs: dict[str, Any] = {}
        self.model_outputs: dict[str, Any] = {}

    def _preprocess(self, data: Any) -> Any:
        return data

    def _inference(self, data: Any) -> Any:  # pragma: no cover - the agent runs the model
        raise NotImplementedError("the edge agent runs the packaged model itself")

    def _postprocess(self, data: Any) -> Any:
        return data


class TfServingBaseService(SingleNodeService):
    """Stand-in for ``model_service.tfserving_model_service.TfServingBaseService``."""


def _stand_in_modules() -> dict[str, ModuleType]:
    """Fresh ``model_service`` modules, so one handler cannot alter what the next one imports."""
    package = ModuleType("model_service")
    package.__path__ = []  # a package: submodule imports resolve through sys.modules
    base = ModuleType("model_service.model_service")
    base.SingleNodeService = SingleNodeService  # type: ignore[attr-defined]
    tfs = ModuleType("model_service.tfserving_model_service")
    tfs.TfServingBaseService = TfServingBaseService  # type: ignore[attr-defined]
    package.model_service = base  # type: ignore[attr-defined]
    package.tfserving_model_service = tfs  # type: ignore[attr-defined]
    return {m.__name__: m for m in (package, base, tfs)}


# sys.modules is process-wide: two installs loading handlers at once must not interleave the
# swap-in / restore of the stand-in modules.
_IMPORT_LOCK = threading.Lock()


def _exec_handler(source: str, module: ModuleType, filename: str) -> None:
    code = compile(source, filename, "exec")
    with _IMPORT_LOCK:
        stand_ins = _stand_in_modules()
        saved = {name: sys.modules.get(name) for name in stand_ins}
        sys.modules.update(stand_ins)
        try:
            # Admitted by the loader: signed by a trusted key and allowed by the settings.
            exec(code, module.__dict__)
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous


def _service_class(module: ModuleType, filename: str) -> type[SingleNodeService]:
    """The one service class the handler defines (the most derived, if it defines a hierarchy)."""
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, SingleNodeService)
        and v.__module__ == module.__name__
    ]
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    if len(leaves) != 1:
        names = ", ".join(sorted(c.__name__ for c in leaves)) or "none"
        raise HandlerLoadError(
            f"{filename} must define exactly one class derived from TfServingBaseService "
            f"(found: {names})"
        )
    return leaves[0]


class _Tensor(Protocol):
    name: str
    datatype: str
    data: np.ndarray


class ModelArtsHooks:
    """A loaded handler instance plus the conversions around its two hooks.

    Methods are synchronous and may run concurrently in the inference thread pool, the way
    ModelArts' threaded server calls one service instance from several requests.
    """

    def __init__(
        self,
        service: SingleNodeService,
        module_name: str,
        inputs: list[TensorSpec],
    ) -> None:
        self.service = service
        self.module = module_name
        self.input_specs = {s.name: s for s in inputs}

    # request -> the ``data`` argument of _preprocess
    def request_data(self, tensors: Sequence[_Tensor]) -> Any:
        """BYTES inputs -> ``{field: {filename: file}}``, or the JSON document of ``request``."""
        if not tensors:
            raise InvalidInput(f"{self.module}: the request has no inputs")
        for t in tensors:
            if t.datatype != "BYTES":
                expected = ", ".join(f"{s.name} {s.datatype}" for s in self.input_specs.values())
                raise InvalidInput(
                    f"input {t.name!r} is {t.datatype}: send BYTES inputs (one per file field, "
                    f"or {JSON_INPUT!r} with JSON) for {self.module}, or exactly the model's "
                    f"tensors ({expected})"
                )
        if any(t.name == JSON_INPUT for t in tensors):
            if len(tensors) != 1 or tensors[0].data.size != 1:
                raise InvalidInput(
                    f"input {JSON_INPUT!r} must be the only input and hold one JSON document"
                )
            try:
                return json.loads(_as_bytes(tensors[0].data.reshape(-1)[0]))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise InvalidInput(f"input {JSON_INPUT!r} is not valid JSON: {exc}") from exc
        data: dict[str, dict[str, io.BytesIO]] = {}
        for t in tensors:
            if t.name in data:
                raise InvalidInput(f"input {t.name!r} is given twice")
            files: dict[str, io.BytesIO] = {}
            for i, item in enumerate(t.data.reshape(-1)):
                f = io.BytesIO(_as_bytes(item))
                f.name = f"{t.name}_{i}"  # type: ignore[attr-defined] - like an uploaded file
                files[f.name] = f  # type: ignore[attr-defined]
            if not files:
                raise InvalidInput(f"input {t.name!r} holds no files")
            data[t.name] = files
        return data

    def preprocess(self, data: Any) -> dict[str, np.ndarray]:
        """Call ``_preprocess``; its errors are the request's fault (INVALID_ARGUMENT)."""
        try:
            result = self.service._preprocess(data)
        except (Exception, SystemExit) as exc:
            log.debug("%s _preprocess raised", self.module, exc_info=True)
            raise InvalidInput(
                f"{self.module} _preprocess raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, dict):
            raise InvalidInput(
                f"{self.module} _preprocess must return a dict of model input name -> array, "
                f"got {type(result).__name__}"
            )
        return {str(k): self._tensor(str(k), v) for k, v in result.items()}

    def _tensor(self, name: str, value: Any) -> np.ndarray:
        """Cast to the input's dtype where that loses no kind (float64 -> FP32, not float -> int),
        and add the batch axis a handler written for one sample leaves out."""
        spec = self.input_specs.get(name)
        try:
            if spec is None:  # the data plane names the model's real inputs in its error
                return np.asarray(value)
            if spec.datatype == "BYTES":
                arr = np.asarray(value, dtype=object)
            else:
                arr = np.asarray(value)
                target = datatype_to_dtype(spec.datatype)
                if arr.dtype == object or not np.can_cast(arr.dtype, target, "same_kind"):
                    raise ValueError(f"{arr.dtype} does not convert to {spec.datatype}")
                arr = arr.astype(target, copy=False)
        except ValueError as exc:
            raise InvalidInput(
                f"{self.module} _preprocess returned an unusable {name!r}: {exc}"
            ) from exc
        if not spec.accepts(arr.shape) and spec.accepts((1, *arr.shape)):
            arr = arr[np.newaxis]
        return arr

    def postprocess(self, outputs: dict[str, np.ndarray]) -> bytes:
        """Call ``_postprocess`` on the outputs as lists; its result as UTF-8 JSON.

        Failures here are the handler's (or the model's), not the request's: INTERNAL.
        """
        data = {name: arr.tolist() for name, arr in outputs.items()}
        try:
            result = self.service._postprocess(data)
        except (Exception, SystemExit) as exc:
            log.warning("%s _postprocess raised", self.module, exc_info=True)
            raise InferenceFailed(
                f"{self.module} _postprocess raised {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return json.dumps(result, default=_jsonable, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise InferenceFailed(
                f"{self.module} _postprocess returned something JSON cannot hold: {exc}"
            ) from exc


def _as_bytes(item: object) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def _jsonable(value: object) -> object:
    """numpy values handlers commonly return (``np.float32`` scores, arrays) as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_hooks(
    handler: PythonHandler,
    model_name: str,
    model_version: str,
    package_dir: Path,
    inputs: list[TensorSpec],
) -> ModelArtsHooks:
    """Execute the handler's source in a fresh module and instantiate its service class.

    ``model_path`` is the extracted package folder: handlers that read files next to their model
    find only what the package carries (the manifest holds the handler and ``config.json``).
    Raises ``HandlerLoadError`` with the reason; the loader turns it into a refused install.
    """
    filename = f"<{model_name}:{model_version}>/{handler.module}"
    module = ModuleType(f"customize_service[{model_name}:{model_version}]")
    module.__file__ = filename
    try:
        _exec_handler(handler.source, module, filename)
    except (Exception, SystemExit) as exc:
        raise HandlerLoadError(
            f"{handler.module} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    cls = _service_class(module, handler.module)
    if "_inference" in vars(cls):
        log.warning(
            "%s overrides _inference; the agent runs the packaged model and never calls it",
            handler.module,
        )
    try:
        service = cls(model_name, str(package_dir))
    except (Exception, SystemExit) as exc:
        raise HandlerLoadError(
            f"{handler.module}: {cls.__name__}() failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ModelArtsHooks(service, handler.module, inputs)
