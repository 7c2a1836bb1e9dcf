"""Gradio's HTTP API without gradio_client, as any program on the internet would call it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

TIMEOUT_S = 600.0  # only a hang reaches it


@dataclass
class Outcome:
    """How one call ended: its last data on success, or the error message Gradio sent (None
    when Gradio sent none)."""

    event: str  # "complete" or "error"
    data: object


def call(url: str, api_name: str, *inputs: object) -> Outcome:
    """POST /gradio_api/call/API_NAME, then read its event stream to the end."""
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
        posted = http.post(f"gradio_api/call/{api_name}", json={"data": list(inputs)})
        if posted.status_code != 200:
            return Outcome("error", posted.json().get("detail"))
        event_id = posted.json()["event_id"]
        event, last = "", None
        with http.stream("GET", f"gradio_api/call/{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    last = json.loads(line.removeprefix("data: "))
                    if event == "error" and isinstance(last, dict):
                        last = last.get("error")
                    if event in ("complete", "error"):
                        return Outcome(event, last)
        return Outcome(event or "closed", last)


def abandon(url: str, api_name: str, *inputs: object) -> None:
    """Start a call, read until its first streamed update, then close the connection (a
    student closing the tab: no Stop, just a vanished socket)."""
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
        event_id = http.post(f"gradio_api/call/{api_name}", json={"data": list(inputs)}).json()[
            "event_id"
        ]
        with http.stream("GET", f"gradio_api/call/{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line == "event: generating":
                    return  # leaving the with-blocks closes the socket mid-stream
