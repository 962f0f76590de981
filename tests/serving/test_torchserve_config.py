"""TorchServe's config.properties (--ts-config) read into our settings: the Java
properties format, which keys give which setting, and what wins over what."""

from __future__ import annotations

import json

import pytest

from serving.config import Config, ConfigError
from serving.torchserve_config import parse_properties


def test_the_java_properties_format():
    text = ("# a comment\n"
            "! another\n"
            "\n"
            "plain=value\n"
            "  spaced   =   around  \n"
            "colon: yes\n"
            "blank separated\n"
            "continued=one,\\\n"
            "     two\n"
            "escaped\\=key=a\\tb\\u00e9\n"
            "empty=\n"
            "twice=first\n"
            "twice=second\n"
            "backslash=ends\\\\\n")
    assert parse_properties(text) == {
        "plain": "value", "spaced": "around  ", "colon": "yes", "blank": "separated",
        "continued": "one,two", "escaped=key": "a\tb\u00e9", "empty": "", "twice": "second",
        "backslash": "ends\\",
    }


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    return store


def load(tmp_path, text, argv=(), environ=None):
    path = tmp_path / "config.properties"
    path.write_text(text)
    return Config.load(["--ts-config", str(path), *argv], environ or {})


def test_addresses_store_and_defaults_become_our_settings(tmp_path, store):
    config = load(tmp_path, f"inference_address=http://0.0.0.0:8085\n"
                            f"management_address=http://127.0.0.1:8086\n"
                            f"metrics_address=http://127.0.0.1:8087\n"
                            f"model_store={store}\n"
                            f"load_models=ALL\n"
                            f"default_workers_per_model=3\n"
                            f"default_response_timeout=45\n"
                            f"max_request_size=104857600\n"
                            f"install_py_dep_per_model=false\n"
                            f"number_of_netty_threads=4\n"
                            f"job_queue_size=10\n")
    assert (config.host, config.port) == ("0.0.0.0", 8085)
    assert (config.management_host, config.management_port) == ("127.0.0.1", 8086)
    assert config.metrics_port == 8087
    assert config.model_store == str(store) and config.models == "all"
    assert (config.workers, config.request_timeout, config.max_payload_mb) == (3, 45, 100)
    assert config.install_requirements is False
    assert config.ts_ignored == ("job_queue_size", "number_of_netty_threads")
    assert config.where("port") == f"inference_address in {tmp_path / 'config.properties'}"


def test_our_flags_and_variables_win_over_the_file(tmp_path, store):
    text = f"inference_address=http://0.0.0.0:8085\nmodel_store={store}\n" \
           f"default_workers_per_model=3\n"
    config = load(tmp_path, text, ["--port", "8080"], {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    assert (config.port, config.workers) == (8080, 1)
    assert config.sources["port"] == "flag" and config.sources["workers"] == "env"


def test_a_snapshot_chooses_the_archives_and_their_settings(tmp_path, store):
    snapshot = {"name": "startup.cfg", "modelCount": 2, "models": {
        "mnist": {"1.0": {"defaultVersion": True, "marName": "mnist.mar", "minWorkers": 1,
                          "maxWorkers": 5, "batchSize": 4, "maxBatchDelay": 50,
                          "responseTimeout": 120}},
        "bert": {"1.0": {"defaultVersion": False, "marName": "bert-1.mar", "batchSize": 1},
                 "2.0": {"defaultVersion": True, "marName": "bert-2.mar", "batchSize": 8}}}}
    config = load(tmp_path, f"model_store={store}\nload_models=all\n"
                            f"model_snapshot={json.dumps(snapshot)}\n")
    assert config.models == "mnist=mnist.mar,bert=bert-2.mar"  # the snapshot over load_models
    assert config.archive_settings == {
        "mnist": ({"max_batch_size": 4, "max_batch_delay_ms": 50, "request_timeout": 120,
                   "workers": 1}, True),
        "bert": ({"max_batch_size": 8}, True)}


def test_per_model_settings_under_the_archive_yaml(tmp_path, store):
    models = {"mnist": {"1.0": {"batchSize": 2, "maxBatchDelay": 10}}}
    config = load(tmp_path, f"model_store={store}\nmodels={json.dumps(models)}\n")
    assert config.models == "all"  # our default: the file names none
    assert config.archive_settings == {
        "mnist": ({"max_batch_size": 2, "max_batch_delay_ms": 10}, False)}


def test_variables_in_values_and_ts_variables(tmp_path, store):
    text = "inference_address=http://0.0.0.0:$$PORT_VAR$$\nmodel_store=$$STORE$$\n" \
           "enable_envvars_config=true\ndefault_workers_per_model=3\n"
    config = load(tmp_path, text, environ={"PORT_VAR": "9001", "STORE": str(store),
                                           "TS_DEFAULT_WORKERS_PER_MODEL": "2"})
    assert (config.port, config.model_store, config.workers) == (9001, str(store), 2)
    # Without enable_envvars_config the TS_ variables are not read, as TorchServe's.
    config = load(tmp_path, text.replace("true", "false"),
                  environ={"PORT_VAR": "9001", "STORE": str(store),
                           "TS_DEFAULT_WORKERS_PER_MODEL": "2"})
    assert config.workers == 3


@pytest.mark.parametrize("text, says", [
    ("inference_address=https://0.0.0.0:8443\n", "only http://HOST:PORT"),
    ("inference_address=unix:/tmp/ts.sock\n", "only http://HOST:PORT"),
    ("management_address=http://0.0.0.0\n", "is not http://HOST:PORT"),
    ("inference_address=http://0.0.0.0:$$NOT_SET$$\n", "NOT_SET, which is not set"),
    ("default_workers_per_model=many\n", "invalid default_workers_per_model='many' in"),
    ("max_request_size=lots\n", "max_request_size in"),
    ("model_snapshot={not json\n", "model_snapshot in"),
    ('model_snapshot={"models": {"m": {"1.0": {"defaultVersion": true}}}}\n', "no marName"),
    ('model_snapshot={"models": {"m": {"1.0": {"marName": "a.mar", "batchSize": 0}}}}\n',
     "batchSize must be a whole number of 1 or more"),
    ('model_snapshot={"models": {"m": {"1": {"marName": "a.mar"}, "2": {"marName": "b.mar"}}}}\n',
     "exactly one must"),
    ("inference_address=http://0.0.0.0:8085\nmanagement_address=http://0.0.0.0:8085\n",
     "is taken by another of the server's ports"),
])
def test_what_cannot_be_served_is_refused_naming_the_key_and_file(tmp_path, store, text,
                                                                   says):
    with pytest.raises(ConfigError, match="config.properties") as error:
        load(tmp_path, f"model_store={store}\n{text}")
    assert says in str(error.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        Config.load(["--ts-config", str(tmp_path / "nope.properties")], {})


def test_the_management_api_listens_where_the_file_says(tmp_path, store):
    from serving.hosts.gunicorn.application import gunicorn_options

    config = load(tmp_path, f"inference_address=http://0.0.0.0:8085\n"
                            f"management_address=http://127.0.0.1:8086\nmodel_store={store}\n",
                  ["--metrics-port", "8082"])
    assert gunicorn_options(config)["bind"] == ["0.0.0.0:8085", "0.0.0.0:8082",
                                                "127.0.0.1:8086"]


def test_a_malformed_escape_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config.properties: a malformed \\u escape"):
        load(tmp_path, "key=\\u12\n")
