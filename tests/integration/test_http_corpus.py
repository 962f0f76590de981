"""gunicorn's HTTP/1.1 request corpus against a real ``serve``.

Every ``invalid/`` request is refused by the worker with a 4xx (or 501/505) and never
reaches the app; every ``valid/`` request reaches the app (which answers it: 404 for the
corpus's made-up paths, KServe's v1 liveness for ``GET /``). Where we differ from gunicorn on purpose, the case is listed
below with the reason; a listed case is still tested, for what we do instead.

Most corpus requests are HTTP/1.1 without a Host field, which RFC 9112 3.2 says a server
MUST refuse with 400, so the Host check alone would refuse them. Each such case is run a
second time with ``Host: corpus.test`` added to each request, so that the check the case
was written for is the one tested.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.http_corpus import Answer, cases, exchange
from tests.server_helpers import REPO

NUMPY_LINEAR = REPO / "examples" / "numpy-linear" / "model"

#: Statuses only the worker's own refusals use (the app answers 404/405 for unknown routes).
REFUSALS = {400, 408, 413, 414, 417, 431, 501, 505}

#: invalid/ cases we route, and why.
INVALID_ROUTED = {
    "invalid/006": "a 4,112-byte request line: under our 8,190-byte target limit (gunicorn's "
                   "limit_request_line is 4,094)",
    "invalid/008": "fields of 8,187 and 4,106 bytes: under our 8,190-byte field limit "
                   "(gunicorn counts the header block against limit_request_field_size)",
    "invalid/010": "non-default gunicorn option: limit_request_field_size=10",
    "invalid/011": "non-default gunicorn option: limit_request_fields=2",
    "invalid/012": "non-default gunicorn option: limit_request_field_size=98",
    "invalid/017": "an 8,189-byte field line: under our 8,190-byte field limit",
    "invalid/019": "non-default gunicorn option: forwarded_allow_ips with conflicting "
                   "X-Forwarded-Proto and X-Forwarded-Ssl; we do not read forwarding fields",
    "invalid/chunked_07": "non-default gunicorn option: header_map=refuse; Transfer_Encoding "
                          "is dropped from the environ and never frames the body",
    "invalid/040": "non-default gunicorn option: header_map=refuse (underscore fields); we "
                   "serve the request and drop underscore fields from the environ",
    "invalid/limit_header_default_01": "non-default gunicorn option: limit_request_field_size=0 "
                                       "(gunicorn's own maximum); 8,190 bytes is under ours",
}

#: valid/ cases we refuse, and why.
VALID_REFUSED = {
    "valid/009": "Content-Length with Transfer-Encoding: refused (RFC 9112 6.1 allows it), the "
                 "smuggling shape proxies disagree on",
    "valid/012": "a Content-Type trailer field: refused, content metadata must come before "
                 "the content (RFC 9110 6.5.1)",
    "valid/013": "whitespace in chunk extensions (5; some; parameters=stuff): llhttp refuses "
                 "it, though RFC 9112 7.1.1 allows BWS there; chunk extensions carried the "
                 "2025 funky-chunks desyncs, and no client we serve sends them",
    "valid/024": "a 8,200-byte field under gunicorn's option limit_request_field_size=8210: over "
                 "our 8,190",
    "valid/025": "Transfer-Encoding gzip, chunked: 501, we do not decode transfer codings "
                 "other than chunked (RFC 9112 6.1 allows 501)",
    "valid/025_line": "Transfer-Encoding gzip,chunked: 501, as valid/025",
    "valid/026": "a field over 8,190 bytes under gunicorn's option limit_request_field_size=8210",
    "valid/027": "a raw non-ASCII byte in the target: we take printable ASCII only (RFC 3986 "
                 "wants it percent-encoded)",
    "valid/028": "non-default gunicorn option: header_map=dangerous (a field name llhttp "
                 "refuses)",
    "valid/029": "Transfer-Encoding identity, chunked: 501 (identity is not a registered "
                 "coding since RFC 7230)",
    "valid/030": "Transfer-Encoding identity, chunked: 501, as valid/029",
    "valid/031": "the method -BLARGH: llhttp takes the registered methods only; our routes "
                 "use GET, POST, DELETE, HEAD, OPTIONS",
    "valid/031compat": "a lower-case method with gunicorn's casefold_http_method option",
    "valid/031compat2": "an unregistered method with permit_unconventional_http_method",
    "valid/099": "the file's body decodes to 8,599 bytes, under its Content-Length of "
                 "17,914: a truncated body, refused when the client closes",
    "valid/compat_obs_fold": "obsolete line folding with gunicorn's permit_obsolete_folding: "
                             "RFC 9112 5.2 lets a server refuse it, and we do",
    "valid/compat_obs_fold_huge": "obsolete line folding, as valid/compat_obs_fold",
    "valid/pp_01": "the PROXY protocol (gunicorn's proxy_protocol option): not spoken",
    "valid/pp_02": "the PROXY protocol: not spoken",
    "valid/pp_04": "the PROXY protocol: not spoken",
    "valid/pp_05": "the PROXY protocol: not spoken",
    "valid/rfc9112_smuggle_gzip_chunked_01": "Transfer-Encoding gzip, chunked: 501, as valid/025",
    "valid/rfc9112_smuggle_te_identity_chunked_01": "Transfer-Encoding identity, chunked: 501",
    "valid/rfc9112_target_authority_connect_01": "CONNECT: 501, this is an origin server, not "
                                                 "a proxy",
    "valid/rfc9112_target_authority_ipv6_01": "CONNECT: 501, as above",
}

#: An HTTP/1.1 request line at the start or right after an empty line.
_REQUEST_LINE = re.compile(rb"(?:^|(?<=\r\n\r\n))([!-~]+ [^ \r\n]+ HTTP/1\.1\r\n)")


def with_host(data: bytes) -> bytes | None:
    """``data`` with ``Host: corpus.test`` after each HTTP/1.1 request line, when it has no
    Host field; None when it needs none."""
    if re.search(rb"\r\nhost:", data, re.I) or not _REQUEST_LINE.search(data):
        return None
    return _REQUEST_LINE.sub(lambda m: m.group(1) + b"Host: corpus.test\r\n", data)


def _lacks_host(request: dict) -> bool:
    return request["version"] == (1, 1) and all(h.upper() != "HOST" for h, _ in request["headers"])


def variants(kind: str) -> list[tuple[str, object, bytes]]:
    found = []
    for case in cases(kind):
        found.append((case.name, case, case.data))
        hosted = with_host(case.data)
        if hosted is not None and (kind == "invalid" or any(map(_lacks_host, case.expect))):
            found.append((case.name + "+host", case, hosted))
    return found


def expected_answers(requests: list[dict], hosted: bool) -> list[str]:
    """What each request of a valid case should get: ``routed``, or ``host`` (400 for
    HTTP/1.1 without Host, which ends the connection). An HTTP/1.0 request without
    keep-alive, or one with Connection: close, is the connection's last."""
    answers = []
    for request in requests:
        if _lacks_host(request) and not hosted:
            answers.append("host")
            break
        answers.append("routed")
        connection = next((v.lower() for h, v in request["headers"] if h.upper() == "CONNECTION"),
                          "")
        if connection == "close" or (request["version"] == (1, 0) and connection != "keep-alive"):
            break
    return answers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.server_helpers import Server

    server = Server(NUMPY_LINEAR, "--workers", "1", "--threads", "2",
                    log_path=tmp_path_factory.mktemp("corpus") / "serve.log")
    server.wait_ready()
    yield server
    server.kill()


def refused_by_worker(server, answer: Answer) -> bool:
    """Whether the worker logged ``answer`` as one it refused (so the app never saw it)."""
    request_id = answer.header("x-request-id")
    return any(request_id in line and "(refused:" in line for line in server.log.splitlines())


def assert_our_json(answer: Answer) -> None:
    assert answer.header("content-type") == "application/json", answer
    body = json.loads(answer.body)
    assert body["code"] == answer.status and body["message"], body


def _ids(value: object) -> str:
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize("name, case, data", variants("invalid"), ids=_ids)
def test_invalid_requests_are_refused_and_never_routed(server, name, case, data):
    answers, closed = exchange(server.port, data)
    if case.name in INVALID_ROUTED and (name.endswith("+host") or with_host(data) is None):
        # Routed, so answered as a valid request to its path is: GET / is KServe v1's
        # liveness route, every other path of the corpus a 404.
        want = 200 if data.startswith(b"GET / ") else 404
        assert answers and all(a.status == want for a in answers), (INVALID_ROUTED[case.name],
                                                                    answers)
        assert not any(refused_by_worker(server, a) for a in answers)
        return
    assert len(answers) == 1, answers
    answer = answers[0]
    assert answer.status in REFUSALS, answer
    assert_our_json(answer)
    assert answer.header("connection") == "close" and closed
    assert refused_by_worker(server, answer), server.log[-2000:]


@pytest.mark.parametrize("name, case, data", variants("valid"), ids=_ids)
def test_valid_requests_are_routed(server, name, case, data):
    answers, _ = exchange(server.port, data)
    hosted = name.endswith("+host")
    if case.name in VALID_REFUSED:
        assert len(answers) == 1 and answers[0].status in REFUSALS, (VALID_REFUSED[case.name],
                                                                     answers)
        assert_our_json(answers[0])
        return
    expected = expected_answers(case.expect, hosted)
    assert len(answers) == len(expected), (expected, answers)
    for answer, request, what in zip(answers, case.expect, expected):
        if what == "host":  # RFC 9112 3.2: a MUST, where gunicorn's parser is lenient
            assert answer.status == 400 and b"exactly one Host" in answer.body, answer
            assert refused_by_worker(server, answer)
            continue
        assert not refused_by_worker(server, answer)
        path = re.split(r"[?#]", request["uri"])[0]
        # Werkzeug's request.path, which the message shows, starts with one slash.
        path = "/" + re.sub(r"^https?://[^/]*", "", path).lstrip("/")
        if (request["method"], path) == ("GET", "/"):  # a route of ours: KServe v1's liveness
            assert answer.status == 200 and json.loads(answer.body) == {"status": "alive"}
            continue
        # The app answers the corpus's made-up paths: 404 names the method and path it routed.
        assert answer.status == 404, answer
        message = json.loads(answer.body)["message"]
        assert message.startswith(f"no route {request['method']} "), message
        assert path in message or path == "*", (path, message)


def test_every_difference_listed_is_a_corpus_case():
    names = {c.name for kind in ("invalid", "valid") for c in cases(kind)}
    assert set(INVALID_ROUTED) | set(VALID_REFUSED) <= names
    assert len(names) == 148 // 2 + 126 // 2
