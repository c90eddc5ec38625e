"""A model's declared pre- and post-processing, together: what runs before and after the model.

The manifest declares it (``model_packager.processing``): encoded images decoded into the
model's input tensor before, softmax and top-k after. It is parsed and checked against the
model's tensors once, at load, so a bad declaration refuses the install instead of failing every
request. The data plane applies the "before" half while validating a request; the served model
applies the "after" half to every result, online or batch.

A ModelArts handler (``python_handlers.py``) is the other kind: its ``_preprocess`` and
``_postprocess`` wrap the model for requests that send files or JSON, and the data plane runs
them both, around one inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.errors import InstallFailed, InvalidInput
from model_packager import processing
from model_packager.manifest import Manifest
from model_packager.processing import ProcessingError
from model_packager.tensors import TensorSpec

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelProcessing:
    pre: processing.Preprocessing | None = None
    post: processing.Postprocessing | None = None
    #: Declared by the manifest; the loader admits and imports it (``ServedModel.hooks``).
    python_handler: processing.PythonHandler | None = None

    @classmethod
    def declared(
        cls, manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec]
    ) -> ModelProcessing:
        """The manifest's declaration, checked against the model's tensors."""
        try:
            pre, post = processing.parse(manifest.preprocessing, manifest.postprocessing)
            if isinstance(pre, processing.PythonHandler):
                # Requests that send the model's own tensors bypass the handler and are served
                # as usual; nothing else is declared next to a handler.
                return cls(python_handler=pre)
            specs = {s.name: s for s in inputs}
            if pre is not None:
                if pre.input not in specs:
                    raise ValueError(f"preprocessing feeds unknown input {pre.input!r}")
                pre.check_against(specs[pre.input])
            if post is not None and post.output not in {s.name for s in outputs}:
                raise ValueError(f"postprocessing reads unknown output {post.output!r}")
        except ValueError as exc:  # a declaration's SchemaError is a ValueError
            raise InstallFailed("load", f"invalid pre/post-processing: {exc}") from exc
        return cls(pre, post)

    # before the model
    def decodes(self, name: str, datatype: str, spec: TensorSpec) -> bool:
        """Whether this input arrives encoded (BYTES images) for the preprocessing to decode."""
        pre = self.pre
        return pre is not None and name == pre.input and datatype == "BYTES" != spec.datatype

    def decode(self, data: np.ndarray) -> np.ndarray:
        """Encoded images -> the model's input tensor; a bad image is the client's error."""
        assert self.pre is not None
        try:
            return self.pre.apply(data)
        except ProcessingError as exc:
            raise InvalidInput(str(exc)) from exc

    # after the model
    def extra_outputs(self) -> list[TensorSpec]:
        """Outputs the post-processing adds to the model's own (top-k)."""
        return self.post.extra_outputs() if self.post is not None else []

    def model_outputs(self, wanted: list[str] | None) -> list[str] | None:
        """The model outputs to compute for ``wanted``: top-k is computed from its scores."""
        post = self.post
        if post is None or wanted is None:
            return wanted
        return list(dict.fromkeys(post.output if n == post.topk_name else n for n in wanted))

    def finish(self, results: Tensors, labels: list[str] | None) -> Tensors:
        """Softmax and top-k over the model's results, when its scores were computed."""
        post = self.post
        if post is None or post.output not in results:
            return results
        return post.apply(results, labels)
