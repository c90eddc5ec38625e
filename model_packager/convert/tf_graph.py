"""Rewrites of a frozen TensorFlow ``GraphDef`` so tf2onnx can convert it.

Two things in Keras 3 graphs stop tf2onnx even after the variables are frozen:

* function calls kept as ``StatefulPartitionedCall`` nodes: Keras compiles some ops with XLA
  (grouped and depthwise convolutions on CPU, e.g. ConvNeXt), and such functions are marked
  ``_noinline``, so freezing leaves them as calls tf2onnx passes through as unknown ops. They are
  inlined here: the body's nodes are copied under the call's name, and an ``IdentityN`` named like
  the call hands its outputs on, so every consumer stays wired as it was;
* ``Erfc`` (Keras's exact GELU) has no ONNX counterpart; it becomes ``1 - Erf(x)``.

TensorFlow is imported inside the functions (the agent imports ``model_packager``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CALLS = ("StatefulPartitionedCall", "PartitionedCall")
_MAX_DEPTH = 8


def rewrite_unsupported(graph_def: Any) -> Any:
    """A copy of ``graph_def`` with function calls inlined and ``Erfc`` replaced."""
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    functions = {f.signature.name: f for f in graph_def.library.function}
    for _ in range(_MAX_DEPTH):
        if not _inline_calls(out, functions):
            break
    _replace_erfc(out)
    return out


def _output_index(op: str, arg: str, k: int) -> int | None:
    """Flat output index of ``arg``'s k-th tensor of ``op``; None if the op's outputs are lists."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op)
    if op_def is None:
        return None
    if any(out.number_attr or out.type_list_attr for out in op_def.output_arg):
        return None
    for index, out in enumerate(op_def.output_arg):
        if out.name == arg:
            return index + k
    return None


def _inline_calls(graph_def: Any, functions: dict[str, Any]) -> bool:
    """Inline every call to a library function whose body has plain outputs; True if any."""
    from tensorflow.core.framework import node_def_pb2

    changed = False
    nodes = []
    for node in graph_def.node:
        fdef = functions.get(node.attr["f"].func.name) if node.op in _CALLS else None
        body = _inlined_body(node, fdef, node_def_pb2) if fdef is not None else None
        if body is None:
            nodes.append(node)
            continue
        nodes.extend(body)
        changed = True
    del graph_def.node[:]
    graph_def.node.extend(nodes)
    return changed


def _inlined_body(call: Any, fdef: Any, node_def_pb2: Any) -> list[Any] | None:
    prefix = f"{call.name}/inlined"
    data_inputs = [i for i in call.input if not i.startswith("^")]
    controls = [i for i in call.input if i.startswith("^")]
    args = {a.name: data_inputs[i] for i, a in enumerate(fdef.signature.input_arg)}
    ops = {n.name: n.op for n in fdef.node_def}

    def ref(name: str) -> str | None:
        if name.startswith("^"):
            return f"^{prefix}/{name[1:]}"
        parts = name.split(":")
        if len(parts) == 1:
            return args.get(parts[0])
        node, arg, k = parts[0], parts[1], int(parts[2]) if len(parts) > 2 else 0
        index = _output_index(ops.get(node, ""), arg, k)
        if index is None:
            return None
        return f"{prefix}/{node}" if index == 0 else f"{prefix}/{node}:{index}"

    body = []
    for n in fdef.node_def:
        copy = node_def_pb2.NodeDef()
        copy.CopyFrom(n)
        copy.name = f"{prefix}/{n.name}"
        copy.device = ""
        new_inputs = [ref(i) for i in n.input]
        if any(i is None for i in new_inputs):
            return None
        del copy.input[:]
        copy.input.extend([i for i in new_inputs if i is not None] + controls)
        body.append(copy)
    outs = [ref(fdef.ret[a.name]) for a in fdef.signature.output_arg]
    if any(o is None for o in outs):
        return None
    hand_on = node_def_pb2.NodeDef(name=call.name, op="IdentityN")
    hand_on.input.extend([o for o in outs if o is not None])
    hand_on.attr["T"].CopyFrom(call.attr["Tout"])
    return [*body, hand_on]


def _replace_erfc(graph_def: Any) -> None:
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2
    from tensorflow.python.framework import dtypes, tensor_util

    nodes = []
    for node in graph_def.node:
        if node.op != "Erfc":
            nodes.append(node)
            continue
        dtype = node.attr["T"]
        erf = node_def_pb2.NodeDef(name=f"{node.name}/erf", op="Erf", input=list(node.input))
        erf.attr["T"].CopyFrom(dtype)
        one = node_def_pb2.NodeDef(name=f"{node.name}/one", op="Const")
        one.attr["dtype"].type = dtype.type
        value = tensor_util.make_tensor_proto(
            np.ones((), dtype=dtypes.as_dtype(dtype.type).as_numpy_dtype)
        )
        one.attr["value"].CopyFrom(attr_value_pb2.AttrValue(tensor=value))
        sub = node_def_pb2.NodeDef(name=node.name, op="Sub", input=[one.name, erf.name])
        sub.attr["T"].CopyFrom(dtype)
        nodes.extend([erf, one, sub])
    del graph_def.node[:]
    graph_def.node.extend(nodes)
