"""Multi-model isolation: every model runs its own code, never another model's.

Models laid out alike (``code/inference.py`` importing its own ``helper``, ``utils``
package and ``model`` module, the names SageMaker multi-model users share) are loaded
into one real ``serve --multi-model`` with two workers. Each answer names the worker
that gave it, and every check is repeated until both workers have answered it (see
:func:`every_worker`), so a module shared in one worker only still fails.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import requests

from tests.integration.multi_model import load, post_fresh, start
from tests.server_helpers import every_worker

#: The same file names in every model; what they say differs by model (``{name}``).
INFERENCE = """
    import os
    import json

    import helper
    import model as model_module
    from utils.text import tag
    from . import helper as relative_helper

    def model_fn(model_dir):
        return model_module.build()

    def predict_fn(data, model):
        import helper as imported_late  # an import at call time: the model's too
        return {
            "pid": os.getpid(),
            "helper": helper.NAME,
            "tag": tag(),
            "model": model(data),
            "one_helper": relative_helper is helper and imported_late is helper,
            "json_module": id(json),
            "module": __name__,
        }
"""
HELPER = 'NAME = "{name}"\n'
UTILS_TEXT = """
    import helper

    def tag():
        return "tag-" + helper.NAME
"""
MODEL = """
    def build():
        return lambda data: ["{name}", *data]
"""


def isolated_model(root: Path, name: str) -> Path:
    """A model directory whose code files are named as every other one's."""
    code = root / name / "code"
    (code / "utils").mkdir(parents=True)
    files = {"inference.py": INFERENCE, "helper.py": HELPER, "utils/__init__.py": "",
             "utils/text.py": UTILS_TEXT, "model.py": MODEL}
    for path, text in files.items():
        (code / path).write_text(textwrap.dedent(text).replace("{name}", name))
    return root / name


def invoke(server, name, **kwargs):
    kwargs.setdefault("json", [1])
    return lambda: post_fresh(server.url(f"/models/{name}/invoke"), **kwargs)


def test_three_models_with_the_same_file_names_each_answer_with_their_own_code(serve, tmp_path):
    server = start(serve, tmp_path)
    names = ("alpha", "beta", "gamma")
    for name in names:
        loaded = load(server, name, isolated_model(tmp_path, name))
        assert loaded.status_code == 200, loaded.text
    json_modules: dict[int, set[int]] = {}
    packages = set()
    for round_ in range(2):  # interleaved: each worker has all three loaded at once
        for name in names:
            for response in every_worker(invoke(server, name, json=[round_])):
                body = response.json()
                assert body["helper"] == name, body
                assert body["tag"] == f"tag-{name}", body
                assert body["model"] == [name, round_], body
                assert body["one_helper"] is True, body
                json_modules.setdefault(body["pid"], set()).add(body["json_module"])
                packages.add((name, body["module"].rpartition(".")[0]))
    # The standard library (and site-packages) stays one module per worker.
    assert all(len(ids) == 1 for ids in json_modules.values()), json_modules
    # Each model's code lives under a package of its own, the same in both workers.
    assert len(packages) == 3 and len({package for _, package in packages}) == 3, packages


HANDLER_AT_IMPORT = """
    import os

    from handlers.content import ContentHandler, register

    class Shout(ContentHandler):
        media_type = "application/x-shout"

        def decode(self, body):
            return body.decode().{transform}

        def encode(self, obj):
            return ("{name}:" + str(obj)).encode()

    register(Shout())

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        return {{"pid": os.getpid(), "got": data}}
"""
#: The same media type, registered from model_fn instead of at import.
HANDLER_IN_MODEL_FN = """
    import os

    from handlers.content import ContentHandler, register

    class Shout(ContentHandler):
        media_type = "application/x-shout"

        def decode(self, body):
            return body.decode()[::-1]

        def encode(self, obj):
            return str(obj).encode()

    def model_fn(model_dir):
        register(Shout())

    def predict_fn(data, model):
        return {"pid": os.getpid(), "got": data}
"""
PLAIN = """
    import os

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        return {"pid": os.getpid(), "got": data}
"""


def code_model(root: Path, name: str, inference: str) -> Path:
    code = root / name / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(textwrap.dedent(inference))
    return root / name


def test_one_media_type_registered_differently_by_two_models(serve, tmp_path):
    server = start(serve, tmp_path)
    upper = code_model(tmp_path, "upper",
                       HANDLER_AT_IMPORT.format(transform="upper()", name="upper"))
    load(server, "upper", upper).raise_for_status()
    load(server, "reverse", code_model(tmp_path, "reverse", HANDLER_IN_MODEL_FN)) \
        .raise_for_status()
    load(server, "plain", code_model(tmp_path, "plain", PLAIN)).raise_for_status()
    shout = {"Content-Type": "application/x-shout"}
    for response in every_worker(invoke(server, "upper", data=b"hey", json=None,
                                        headers=shout)):
        assert response.json()["got"] == "HEY"
    for response in every_worker(invoke(server, "reverse", data=b"hey", json=None,
                                        headers=shout)):
        assert response.json()["got"] == "yeh"
    # A model that registered nothing does not take the others' type, on either worker.
    for _ in range(6):
        refused = post_fresh(server.url("/models/plain/invoke"), data=b"hey", headers=shout)
        assert refused.status_code == 415, refused.text
        assert "application/x-shout" in refused.json()["message"]
    # The answer side too: each model encodes with its own handler.
    answered = post_fresh(server.url("/models/upper/invoke"), json=[1],
                          headers={"Accept": "application/x-shout"})
    assert answered.status_code == 200 and answered.content.startswith(b"upper:"), \
        answered.content

    # Unloaded and loaded again in the same workers: it registers its type afresh.
    assert requests.delete(server.url("/models/upper"), timeout=30).status_code == 200
    again = load(server, "upper", upper)
    assert again.status_code == 200, again.text
    for response in every_worker(invoke(server, "upper", data=b"hey", json=None,
                                        headers=shout)):
        assert response.json()["got"] == "HEY"


def test_unload_change_the_files_load_again_runs_the_new_code(serve, tmp_path):
    # Bytecode caching on, as in an image that does not turn it off (this machine does).
    server = start(serve, tmp_path, env={"PYTHONDONTWRITEBYTECODE": ""})
    directory = isolated_model(tmp_path, "m")
    load(server, "m", directory).raise_for_status()
    for response in every_worker(invoke(server, "m")):  # both workers hold the old code
        assert response.json()["helper"] == "m" and response.json()["tag"] == "tag-m"
    assert requests.delete(server.url("/models/m"), timeout=30).status_code == 200
    # Same sizes, same second: __pycache__, keyed on (mtime in whole seconds, size),
    # would run the old code.
    code = directory / "code"
    (code / "helper.py").write_text('NAME = "n"\n')
    (code / "model.py").write_text((code / "model.py").read_text().replace('"m"', '"n"'))
    again = load(server, "m", directory)
    assert again.status_code == 200, again.text
    for response in every_worker(invoke(server, "m", json=[7])):
        body = response.json()
        assert body["helper"] == "n" and body["tag"] == "tag-n" and body["model"] == ["n", 7], \
            body


def test_a_module_only_another_model_has_is_an_import_error(serve, tmp_path):
    server = start(serve, tmp_path)
    load(server, "owner", isolated_model(tmp_path, "owner")).raise_for_status()
    every_worker(invoke(server, "owner"))  # its helper is imported in both workers now
    borrower = code_model(tmp_path, "borrower", """
        import helper  # only the model "owner" has a helper.py

        def predict_fn(data, model):
            return helper.NAME
    """)
    for _ in range(4):  # whichever worker takes the load
        refused = load(server, "borrower", borrower)
        assert refused.status_code == 400, refused.text
        message = refused.json()["message"]
        assert "ModuleNotFoundError" in message and "'helper'" in message, message
    listed = [m["modelName"] for m in requests.get(server.url("/models"), timeout=30)
              .json()["models"]]
    assert listed == ["owner"]
    # An import at call time reaches no other model's module either.
    late = code_model(tmp_path, "late", """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            import helper
            return helper.NAME
    """)
    load(server, "late", late).raise_for_status()
    for _ in range(4):
        failed = post_fresh(server.url("/models/late/invoke"), json=[1])
        assert failed.status_code == 500, failed.text
        assert failed.json()["exception"] == "ModuleNotFoundError", failed.json()
    every_worker(invoke(server, "owner"))  # and the owner still answers on both
