"""The serving wing: what turns a loaded package into answered requests.

``dataplane`` owns a request's life (decoding, admission, validation, processing, metrics) over
the plain types of ``requests``; ``validation`` checks tensors against the model; ``processing``
and ``python_handlers`` run a package's declared pre/post-processing; ``served_model`` decides
where one inference runs and ``batching`` merges concurrent ones; ``repository`` holds the loaded
versions and the active one; ``loader`` turns an extracted package into a ``ServedModel``.
Nothing here knows about gRPC, installs or the fleet.
"""
