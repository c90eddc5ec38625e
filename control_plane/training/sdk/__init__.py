"""The helper module user training scripts import (``edge_training``); see its docstring.

This folder is put on every job's ``PYTHONPATH`` so that ``import edge_training`` works on the
control plane's Python and on the MXNet environment alike.
"""
