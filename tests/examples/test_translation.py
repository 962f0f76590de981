"""examples/translation: a JSON string in, the translated JSON string (HTML-escaped) out."""

from __future__ import annotations

import html

import pytest
import requests

from tests.examples.conftest import sdk, served_example

pytestmark = pytest.mark.pytorch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_example("translation", tmp_path_factory) as server:
        yield server


@pytest.mark.parametrize("english, french", [
    ("The man is tall", "l'homme est grand"),
    ("where is the station ?", "où est la gare ?"),
    ("I love the sea", "j'aime la mer"),
])
def test_sdk_json_predictor_and_html_unescape_like_the_notebook(server, english, french):
    result = sdk(server, "json_payload", english)["result"]
    assert isinstance(result, str)
    assert html.unescape(result) == french
    if "'" in french:
        assert "&apos;" in result and "'" not in result  # escaped as the notebook expects


def test_curl_style_request_and_same_answer_twice(server):
    answers = [requests.post(server.url(), data='"the cat is black"',
                             headers={"Content-Type": "application/json"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json() == "le chat est noir"


@pytest.mark.parametrize("body, content_type, status", [
    ("[1, 2]", "application/json", 400),
    ('""', "application/json", 400),
    ("the cat", "text/plain", 415),
])
def test_bad_requests_are_4xx(server, body, content_type, status):
    response = requests.post(server.url(), data=body, headers={"Content-Type": content_type})
    assert response.status_code == status and response.json()["code"] == status


def test_the_notebooks_call_as_written(server):
    """Seed 000's call: JSONPredictor (ContentType and Accept application/json; the SDK v2
    JSONSerializer and JSONDeserializer stand in) on its own sentence, whose words the
    small example model has mostly never seen; the answer is still a JSON string, which
    the notebook unescapes and prints."""
    result = sdk(server, "json_payload", "Hey, how you're doing?")["result"]
    assert isinstance(result, str) and html.unescape(result).strip()
