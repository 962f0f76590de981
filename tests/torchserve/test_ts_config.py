"""The same config.properties, with a ``model_snapshot`` as KServe's TorchServe runtime
mounts one, started by TorchServe 0.12 and by ``serve --ts-config``: the same models
under the snapshot's names, each with the snapshot's batching, and the management API
where the file puts it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.server_helpers import free_port
from tests.torchserve.conftest import TorchServe, write_config

#: Two archives of the store under names of the snapshot's, one of them ("tuned", the
#: batching archive) with a batch size and delay that its own YAML (4, 200 ms) does not say.
SNAPSHOT = {"name": "startup.cfg", "modelCount": 2, "models": {
    "tuned": {"1.0": {"defaultVersion": True, "marName": "batching.mar", "minWorkers": 1,
                      "maxWorkers": 1, "batchSize": 2, "maxBatchDelay": 40,
                      "responseTimeout": 30}},
    "probe": {"2.0": {"defaultVersion": True, "marName": "probe.mar", "minWorkers": 1,
                      "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100,
                      "responseTimeout": 120}}}}
MORE = f"model_snapshot={json.dumps(SNAPSHOT)}\nnumber_of_netty_threads=4\njob_queue_size=10\n"


@pytest.fixture(scope="module")
def theirs(store, tmp_path_factory):
    server = TorchServe(store, tmp_path_factory.mktemp("torchserve-snapshot"), MORE,
                        models=())  # the snapshot says which, as KServe's runtime starts it
    try:
        server.wait_ready(["tuned", "probe"])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mine(store, tmp_path_factory):
    from tests.server_helpers import Server

    run = tmp_path_factory.mktemp("ours-snapshot")
    management_port = free_port()
    config = write_config(run / "config.properties", free_port(), management_port, MORE)
    server = Server(store, "--model-store", str(store), "--ts-config", str(config),
                    log_path=run / "serve.log")
    server.management = lambda path: f"http://127.0.0.1:{management_port}{path}"
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.terminate()


def test_the_snapshot_chooses_the_models_and_names_them(theirs, mine):
    listings = []
    for server in (theirs, mine):
        answer = requests.get(server.management("/models"), timeout=30)
        assert answer.status_code == 200
        listings.append(sorted((m["modelName"], m["modelUrl"]) for m in answer.json()["models"]))
    assert listings[0] == listings[1] == [("probe", "probe.mar"), ("tuned", "batching.mar")]
    for server in (theirs, mine):  # an archive of the store that the snapshot leaves out
        assert requests.post(server.url("/predictions/eager"), json={},
                             timeout=30).status_code == 404


def test_the_snapshot_sets_each_models_batching(theirs, mine):
    described = []
    for server in (theirs, mine):
        answer = requests.get(server.management("/models/tuned"), timeout=30)
        assert answer.status_code == 200
        (model,) = answer.json()
        described.append((model["batchSize"], model["maxBatchDelay"], model["modelVersion"]))
    # The snapshot's, not the archive's YAML (4, 200): TorchServe restores it as saved.
    assert described[0] == described[1] == (2, 40, "1.0")

    def burst(server):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda i: requests.post(server.url("/predictions/tuned"), json={"i": i},
                                        timeout=60), range(16)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert [b["echo"] for b in bodies] == [{"i": i} for i in range(16)]
        assert {b["batch_size"] for b in bodies} == {2}  # what the handler's context says
        return {b["batch"] for b in bodies}

    assert burst(theirs) <= {1, 2} and burst(mine) <= {1, 2}


def test_the_models_answer_the_same(theirs, mine):
    bodies = []
    for server in (theirs, mine):
        answer = requests.post(server.url("/predictions/probe"), json={"a": 1}, timeout=30)
        assert answer.status_code == 200
        body = answer.json()
        bodies.append((body["model_name"], body["props"]["batch_size"]))
    assert bodies[0] == bodies[1] == ("probe", 1)


def test_the_file_is_named_in_our_log_with_what_changes_nothing(mine):
    # disable_token_authorization and enable_model_api are honoured (not listed).
    assert "not used here: grpc_inference_port, grpc_management_port, job_queue_size, " \
           "number_of_netty_threads" in mine.log
