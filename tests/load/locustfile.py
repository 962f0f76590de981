"""The load test to run against a serving container before it goes live.

    locust -f tests/load/locustfile.py --headless -H http://127.0.0.1:8080 \\
        -u 16 -r 16 -t 60s --payload my-request.json

Every option is a locust option (``locust -f tests/load/locustfile.py --help`` lists
them under "Custom options") or the environment variable beside it:

=========================  ======================  ========================================
option                     variable                what
=========================  ======================  ========================================
``--path``                 ``LOCUST_PATH``         route to POST to (``/invocations``)
``--payload``              ``LOCUST_PAYLOAD``      file sent as the body (``[[1, 2, 3]]``,
                                                   the numpy-linear example's row, if unset)
``--content-type``         ``LOCUST_CONTENT_TYPE`` its Content-Type (else from the file's
                                                   extension: .json .jsonl .csv .npy .npz
                                                   .jpg .png .pb/.rec, else JSON)
``--accept``               ``LOCUST_ACCEPT``       Accept sent, and the answer's expected
                                                   Content-Type (``application/json``)
``--expect-status``        ``LOCUST_EXPECT_STATUS`` the answer's expected status (200)
``--mix``                  ``LOCUST_MIX``          a JSON file of several requests, sent in
                                                   proportion to their weights (below)
``--think-time``           ``LOCUST_THINK_TIME``   seconds each user waits between requests
=========================  ======================  ========================================

A mix file is a list of requests; paths are relative to the file::

    [{"name": "row", "payload": "row.json", "weight": 8},
     {"name": "image", "payload": "cat.jpg", "accept": "application/json", "weight": 1},
     {"name": "bad", "payload": "bad.json", "expect_status": 415, "weight": 1,
      "content_type": "text/plain"}]

An answer with another status, or another Content-Type than the Accept sent (when that
names one type), counts as a failure with the reason; locust then exits with status 1.
Users are ``FastHttpUser``s: the load generator spends less of the machine than the
server it measures.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, events, task

#: What --payload defaults to: one row for the numpy-linear example (rows of 3 numbers).
DEFAULT_BODY = b"[[1.0, 2.0, 3.0]]"

CONTENT_TYPES = {
    ".json": "application/json", ".jsonl": "application/jsonlines", ".csv": "text/csv",
    ".npy": "application/x-npy", ".npz": "application/x-npz", ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg", ".png": "image/png", ".pb": "application/x-recordio-protobuf",
    ".rec": "application/x-recordio-protobuf", ".txt": "text/plain",
}


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("serving-toolkit")
    group.add_argument("--path", env_var="LOCUST_PATH", default="/invocations",
                       help="route to POST to")
    group.add_argument("--payload", env_var="LOCUST_PAYLOAD", default="",
                       help="file sent as the request body")
    group.add_argument("--content-type", env_var="LOCUST_CONTENT_TYPE", default="",
                       help="the body's Content-Type (default: from the file's extension)")
    group.add_argument("--accept", env_var="LOCUST_ACCEPT", default="application/json",
                       help="Accept sent, and the Content-Type the answer must have")
    group.add_argument("--expect-status", env_var="LOCUST_EXPECT_STATUS", type=int,
                       default=200, help="the status every answer must have")
    group.add_argument("--mix", env_var="LOCUST_MIX", default="",
                       help="JSON file of weighted requests (see the locustfile)")
    group.add_argument("--think-time", env_var="LOCUST_THINK_TIME", type=float, default=0.0,
                       help="seconds each user waits between requests")


class Request:
    """One kind of request the users send, and what its answer must look like."""

    def __init__(self, *, name: str, body: bytes, content_type: str, accept: str,
                 expect_status: int, path: str, weight: int = 1) -> None:
        self.name, self.body, self.path, self.weight = name, body, path, weight
        self.headers = {"Content-Type": content_type, "Accept": accept}
        self.expect_status = expect_status
        # "*/*" or a list names no one type: the answer's type is then not checked.
        self.expect_type = accept if "," not in accept and "*" not in accept else None

    def failure(self, status: int, content_type: str | None) -> str | None:
        """Why this answer is wrong, or None."""
        if status != self.expect_status:
            return f"status {status}, expected {self.expect_status}"
        answer_type = (content_type or "").split(";")[0].strip().lower()
        if self.expect_type is not None and self.expect_status < 300 \
                and answer_type != self.expect_type.lower():
            return f"Content-Type {content_type!r}, expected {self.expect_type}"
        return None


def content_type_of(path: str) -> str:
    return CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/json")


def read_requests(options) -> list[Request]:
    if options.mix:
        base = os.path.dirname(os.path.abspath(options.mix))
        with open(options.mix) as f:
            entries = json.load(f)
        requests = []
        for i, entry in enumerate(entries):
            payload = os.path.join(base, entry["payload"])
            with open(payload, "rb") as f:
                body = f.read()
            requests.append(Request(
                name=entry.get("name", os.path.basename(payload)), body=body,
                content_type=entry.get("content_type") or content_type_of(payload),
                accept=entry.get("accept", options.accept),
                expect_status=int(entry.get("expect_status", options.expect_status)),
                path=entry.get("path", options.path), weight=int(entry.get("weight", 1))))
        return requests
    if options.payload:
        with open(options.payload, "rb") as f:
            body = f.read()
        default_type = content_type_of(options.payload)
    else:
        body, default_type = DEFAULT_BODY, "application/json"
    return [Request(name=options.path, body=body,
                    content_type=options.content_type or default_type, accept=options.accept,
                    expect_status=options.expect_status, path=options.path)]


class InferenceUser(FastHttpUser):
    """POSTs the configured requests as fast as the server answers (or with think time)."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.requests = read_requests(options)
        self.weights = [r.weight for r in self.requests]
        self.think_time = options.think_time

    def wait_time(self) -> float:
        return self.think_time * random.uniform(0.5, 1.5)

    @task
    def invoke(self) -> None:
        request = random.choices(self.requests, self.weights)[0]
        with self.client.post(request.path, data=request.body, headers=request.headers,
                              name=request.name, catch_response=True) as response:
            reason = request.failure(response.status_code,
                                     response.headers.get("Content-Type"))
            if reason is not None:
                response.failure(reason)
            else:
                response.success()
