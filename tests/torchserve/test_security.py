"""TorchServe 0.12's security defaults against ours, from the same config.properties
(neither token authorization nor the model API named in it): the same answers with and
without keys, with the wrong key, after a key is renewed, and to registering and
unregistering while the model API is off. And with the model API on, the urls both
refuse; where we are stricter on purpose (a symlink out of the store, a cross-site
form post), both sides are checked."""

from __future__ import annotations

import json

import pytest
import requests

from tests.server_helpers import free_port
from tests.torchserve.conftest import TorchServe, write_config

MODELS = ("--models", "probe=probe.mar")


@pytest.fixture(scope="module")
def pair(store, tmp_path_factory):
    """TorchServe and ours, each started from its own copy of one secure config."""
    from tests.server_helpers import Server

    theirs = TorchServe(store, tmp_path_factory.mktemp("ts-secure"), models=MODELS,
                        secure=True)
    run = tmp_path_factory.mktemp("ours-secure")
    management_port = free_port()
    config = write_config(run / "config.properties", free_port(), management_port,
                          secure=True)
    ours = Server(store, "--model-store", str(store), *MODELS, "--ts-config", str(config),
                  "--key-file", str(run / "key_file.json"), log_path=run / "serve.log")
    ours.management = lambda path: f"http://127.0.0.1:{management_port}{path}"
    ours.keys = lambda: {kind: entry["key"] for kind, entry in
                         json.loads((run / "key_file.json").read_text()).items()}
    try:
        theirs.wait_ready(["probe"], secure=True)
        ours.wait_ready(timeout=120, headers=lambda: bearer(ours.keys()["inference"]))
        yield theirs, ours
    finally:
        theirs.stop()
        ours.terminate()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def answers(pair, where: str, method: str, path: str, key: str | None, **kwargs):
    """Both servers' answers to one request, each with its own key of that kind."""
    out = []
    for server in pair:
        url = server.url(path) if where == "inference" else server.management(path)
        headers = bearer(server.keys()[key]) if key else {}
        out.append(requests.request(method, url, headers=headers, timeout=60, **kwargs))
    return out


def same(theirs: requests.Response, mine: requests.Response, status: int) -> None:
    assert theirs.status_code == mine.status_code == status, (theirs.text, mine.text)
    if status >= 400:
        theirs_body, mine_body = theirs.json(), mine.json()
        assert mine_body["code"] == theirs_body["code"]
        assert mine_body["type"] == theirs_body["type"]
        assert mine_body["message"] == theirs_body["message"]


@pytest.mark.parametrize("key, status", [(None, 400), ("management", 400), ("API", 400),
                                         ("inference", 200)])
def test_the_inference_api_needs_the_inference_key(pair, key, status):
    same(*answers(pair, "inference", "POST", "/predictions/probe", key, json={"a": 1}),
         status)
    same(*answers(pair, "inference", "GET", "/ping", key), status)


@pytest.mark.parametrize("key, status", [(None, 400), ("inference", 400), ("API", 400),
                                         ("management", 200)])
def test_the_management_api_needs_the_management_key(pair, key, status):
    theirs, mine = answers(pair, "management", "GET", "/models", key)
    same(theirs, mine, status)
    if status == 200:
        assert theirs.json() == mine.json()


@pytest.mark.parametrize("method, path", [("POST", "/models?url=probe.mar&model_name=p2"),
                                          ("DELETE", "/models/probe")])
def test_registering_is_off_unless_enabled(pair, method, path):
    same(*answers(pair, "management", method, path, "management"), 405)
    # ... and nothing changed.
    theirs, mine = answers(pair, "management", "GET", "/models", "management")
    assert theirs.json() == mine.json() == {"models": [{"modelName": "probe",
                                                        "modelUrl": "probe.mar"}]}


def test_a_renewed_key_replaces_the_old_one(pair):
    same(*answers(pair, "management", "GET", "/token?type=inference", "management"), 400)
    before = [server.keys()["inference"] for server in pair]
    theirs, mine = answers(pair, "management", "GET", "/token?type=inference", "API")
    assert theirs.status_code == mine.status_code == 200
    after = [server.keys()["inference"] for server in pair]
    assert before[0] != after[0] and before[1] != after[1]
    stale = [requests.post(server.url("/predictions/probe"), json={}, headers=bearer(old),
                           timeout=30) for server, old in zip(pair, before)]
    same(*stale, 400)
    same(*answers(pair, "inference", "POST", "/predictions/probe", "inference", json={}), 200)


def test_urls_refused_with_the_model_api_on(torchserve, store, tmp_path_factory):
    """With the model API on (the shared TorchServe of the differential test), what both
    refuse, and where we refuse more."""
    from tests.server_helpers import Server

    port = free_port()
    run = tmp_path_factory.mktemp("ours-urls")
    ours = Server(store, "--model-store", str(store), *MODELS, "--management-port", str(port),
                  "--disable-token-auth", "--enable-model-api", log_path=run / "serve.log")
    try:
        ours.wait_ready(timeout=120)
        outside = tmp_path_factory.mktemp("outside")
        (outside / "o.mar").write_bytes((store / "probe.mar").read_bytes())
        link = store / "outside-link.mar"
        link.symlink_to(outside / "o.mar")
        try:
            register = lambda server_url, url, name: requests.post(  # noqa: E731
                server_url + "/models", params={"url": url, "model_name": name}, timeout=60)
            for url in ("../probe.mar", f"file://{store}/../{store.name}/probe.mar",
                        "missing.mar"):
                theirs = register(torchserve.management(""), url, "u1")
                mine = register(f"http://127.0.0.1:{port}", url, "u1")
                same(theirs, mine, 404)
            # A symlink in the store pointing out of it: TorchServe follows it; we do not.
            theirs = register(torchserve.management(""), "outside-link.mar", "linked")
            mine = register(f"http://127.0.0.1:{port}", "outside-link.mar", "linked")
            assert theirs.status_code == 200 and mine.status_code == 404, mine.text
            requests.delete(torchserve.management("/models/linked"), timeout=60)
            # A form post from another site: TorchServe registers it; we refuse it.
            form = {"Origin": "http://evil.example",
                    "Content-Type": "application/x-www-form-urlencoded"}
            theirs = requests.post(torchserve.management("/models?url=probe.mar&model_name=x"),
                                   headers=form, timeout=60)
            mine = requests.post(f"http://127.0.0.1:{port}/models?url=probe.mar&model_name=x",
                                 headers=form, timeout=60)
            assert theirs.status_code == 200 and mine.status_code == 403
            requests.delete(torchserve.management("/models/x"), timeout=60)
        finally:
            link.unlink()
    finally:
        ours.terminate()
