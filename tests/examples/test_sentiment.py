"""examples/sentiment: sentences in as NPY, [sentence, prediction, score] rows out as NPY."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests

from tests.examples.conftest import sdk, served_example

pytestmark = pytest.mark.chainer

SENTENCES = [
    "It is fun and easy to watch, a joyful ride!",
    "A dull film with a lazy script.",
    "Brilliant acting and a great soundtrack",
    "I hated every minute of it",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_example("sentiment", tmp_path_factory) as server:
        yield server


def test_sdk_numpy_predictor_like_the_notebook(server):
    out = sdk(server, "numpy_payload", SENTENCES)
    assert out["shape"] == [4, 3] and out["dtype_kind"] == "U"  # strings: no pickles
    rows = out["result"]
    assert [row[0] for row in rows] == [
        "it is fun and easy to watch a joyful ride", "a dull film with a lazy script",
        "brilliant acting and a great soundtrack", "i hated every minute of it"]
    assert [row[1] for row in rows] == ["positive", "negative", "positive", "negative"]
    assert all(0.5 <= float(row[2]) <= 1.0 for row in rows)


def test_same_sentences_same_scores_and_raw_npy(server):
    buf = io.BytesIO()
    np.save(buf, np.array(SENTENCES))
    answers = [requests.post(server.url(), data=buf.getvalue(), headers={
        "Content-Type": "application/x-npy", "Accept": "application/x-npy"}) for _ in range(2)]
    assert all(a.status_code == 200 for a in answers)
    first, second = (np.load(io.BytesIO(a.content), allow_pickle=False) for a in answers)
    assert np.array_equal(first, second)  # dropout is off when serving


def test_numbers_instead_of_sentences_are_a_client_error(server):
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    response = requests.post(server.url(), data=buf.getvalue(),
                             headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 422 and "sentences" in response.json()["message"]


def test_pickled_object_arrays_are_refused(server):
    buf = io.BytesIO()
    np.save(buf, np.array(["a", None], dtype=object), allow_pickle=True)
    response = requests.post(server.url(), data=buf.getvalue(),
                             headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 400 and "pickles are refused" in response.json()["message"]


def test_the_notebooks_two_calls_as_written(server):
    """Seed 003's calls: ChainerPredictor (NPY in, NPY out; the SDK v2 NumpySerializer and
    NumpyDeserializer stand in) on its three sentences, then on the test file's lines
    read with readlines(2000) and the label cut off; each row unpacks into three."""
    from tests.server_helpers import REPO

    sentences = ['It is fun and easy to train Chainer models on Amazon SageMaker!',
                 'It used to be slow, difficult, and laborious to train and deploy a model to '
                 'production.',
                 'But now it is super fast to deploy to production. And I love it when my model '
                 'generalizes!']
    with open(REPO / "examples" / "sentiment" / "data" / "sentences.tsv") as f:
        lines = f.readlines(2000)
        from_file = [sentence[1:].strip() for sentence in lines]
    assert len(from_file) > 10
    for batch in (sentences, from_file):
        out = sdk(server, "numpy_payload", batch)
        assert out["dtype_kind"] == "U"  # v1's numpy_deserializer loads without pickles
        assert out["shape"] == [len(batch), 3]
        for row in out["result"]:
            sentence, prediction, score = row
            assert prediction in ("positive", "negative") and 0.5 <= float(score) <= 1.0
    # The headers v1's ChainerPredictor sends, and np.load as it calls it (no allow_pickle).
    buf = io.BytesIO()
    np.save(buf, np.array(sentences))
    response = requests.post(server.url(), data=buf.getvalue(), headers={
        "Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert response.status_code == 200
    assert np.load(io.BytesIO(response.content)).shape == (3, 3)
