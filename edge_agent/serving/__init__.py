"""The serving wing: what turns a loaded package into answered requests.

``dataplane`` owns a request's life (admission, validation, processing, metrics),
``served_model`` decides where one inference runs, ``batching`` merges concurrent requests,
``repository`` holds the loaded versions and the active one, ``loader`` turns an extracted
package into a ``ServedModel``, ``processing`` and ``python_handlers`` run a package's declared
pre/post-processing. Nothing here knows about gRPC, installs or the fleet.
"""
