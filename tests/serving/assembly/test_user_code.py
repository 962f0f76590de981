"""The user-code loader: a model's modules private to it, in one process."""

from __future__ import annotations

import sys
import textwrap

import pytest

from handlers.content import default_registry
from serving.assembly.user_code import load_user_code
from serving.errors import StartupError


def code_dir(root, files):
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


def private_modules(package):
    return sorted(n for n in sys.modules if n == package or n.startswith(package + "."))


def test_a_failed_import_leaves_none_of_the_models_modules_behind(tmp_path):
    code = code_dir(tmp_path, {"inference.py": "import helper\nraise RuntimeError('no')\n",
                               "helper.py": "NAME = 1\n"})
    with pytest.raises(StartupError, match="RuntimeError: no"):
        load_user_code(str(code / "inference.py"), default_registry(), private="serving_model_f")
    assert private_modules("serving_model_f") == []
    assert "helper" not in sys.modules


def test_release_forgets_the_models_modules(tmp_path):
    code = code_dir(tmp_path, {"inference.py": "import helper\n", "helper.py": "NAME = 1\n"})
    loaded = load_user_code(str(code / "inference.py"), default_registry(),
                            private="serving_model_r")
    assert private_modules("serving_model_r") == [
        "serving_model_r", "serving_model_r.helper", "serving_model_r.inference"]
    loaded.release()
    assert private_modules("serving_model_r") == []
    with pytest.raises(ImportError):  # nothing resolves into the released package
        __import__("serving_model_r.helper")


def test_a_bare_directory_does_not_shadow_an_installed_package(tmp_path):
    # A folder named like an installed package (no __init__.py: a namespace portion)
    # yields to it, as it would on sys.path; the model's own helper still comes first.
    code = code_dir(tmp_path, {
        "inference.py": "import numpy, helper\nNUMPY = numpy.__file__\nHELPER = helper.NAME\n",
        "helper.py": "NAME = 'own'\n",
        "numpy/notes.txt": "not a package\n",
    })
    loaded = load_user_code(str(code / "inference.py"), default_registry(),
                            private="serving_model_n")
    try:
        assert loaded.module.NUMPY == sys.modules["numpy"].__file__
        assert loaded.module.HELPER == "own"
    finally:
        loaded.release()


def test_the_single_model_namespace_is_the_process(tmp_path):
    # One model is one namespace: its modules under their own names, so that a pickle
    # naming model.Net loads (as in SageMaker's own containers).
    code = code_dir(tmp_path, {"serving_test_single.py": "import serving_test_helper\n",
                               "serving_test_helper.py": "NAME = 1\n"})
    try:
        loaded = load_user_code(str(code / "serving_test_single.py"), default_registry())
        assert loaded.package is None
        assert sys.modules["serving_test_helper"].NAME == 1
        assert loaded.module is sys.modules["serving_test_single"]
    finally:
        sys.path.remove(str(code))
        for name in ("serving_test_single", "serving_test_helper"):
            sys.modules.pop(name, None)


def test_the_standard_library_is_not_shadowed_by_a_models_file(tmp_path):
    code = code_dir(tmp_path, {"inference.py": "import logging\nLOGGING = logging\n",
                               "logging.py": "raise RuntimeError('the model file ran')\n"})
    loaded = load_user_code(str(code / "inference.py"), default_registry(),
                            private="serving_model_s")
    try:
        assert loaded.module.LOGGING is sys.modules["logging"]
    finally:
        loaded.release()
