"""Run code on a Jupyter kernel through the control plane's proxy (Jupyter messaging over a
websocket, JSON frames), as JupyterLab does."""

from __future__ import annotations

import json
import uuid
from typing import Any

from websockets.sync.client import connect


def _message(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": "test",
            "session": session,
            "msg_type": msg_type,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "buffers": [],
        "channel": "shell",
    }


def execute(ws_url: str, headers: dict[str, str], code: str, timeout: float = 120) -> str:
    """Execute ``code``; returns its stdout; raises with the traceback on an error."""
    session = uuid.uuid4().hex
    out: list[str] = []
    with connect(
        f"{ws_url}?session_id={session}",
        additional_headers=headers,
        open_timeout=30,
        proxy=None,
    ) as ws:
        request = _message(
            "execute_request",
            {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
            session,
        )
        ws.send(json.dumps(request))
        msg_id = request["header"]["msg_id"]
        # Done when both the shell reply and iopub's "idle" have come: the two channels are not
        # ordered with each other, so output may still arrive after the reply.
        replied = idle = False
        while not (replied and idle):
            msg = json.loads(ws.recv(timeout=timeout))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out)
