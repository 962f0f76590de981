import pytest

from serving.contract.negotiation import choose_accept, parse_accept, parse_media_type

OFFERED = ["application/json", "application/x-npy", "text/csv"]


@pytest.mark.parametrize(
    "text, essence, params",
    [
        ("application/json", "application/json", {}),
        ("Application/JSON; charset=UTF-8", "application/json", {"charset": "UTF-8"}),
        ("text/csv;header=present ; q=0.5", "text/csv", {"header": "present", "q": "0.5"}),
        ('application/x-npy; name="a b"', "application/x-npy", {"name": "a b"}),
    ],
)
def test_parse_media_type(text, essence, params):
    media = parse_media_type(text)
    assert media.essence == essence and dict(media.params) == params


@pytest.mark.parametrize("text", ["", "json", "application/", "/json", "a b/c", "text/csv/x"])
def test_parse_media_type_refuses(text):
    with pytest.raises(ValueError):
        parse_media_type(text)


def test_parse_accept_orders_by_q_then_client_order():
    ranges = parse_accept("text/csv;q=0.5, application/x-npy, */*;q=0.1, application/json")
    assert [(r.type, r.subtype, r.q) for r in ranges] == [
        ("application", "x-npy", 1.0),
        ("application", "json", 1.0),
        ("text", "csv", 0.5),
        ("*", "*", 0.1),
    ]


@pytest.mark.parametrize(
    "accept, default, chosen",
    [
        (None, "application/json", "application/json"),
        ("", "application/json", "application/json"),
        ("*/*", "application/x-npy", "application/x-npy"),
        ("*", "application/json", "application/json"),
        ("application/x-npy", "application/json", "application/x-npy"),
        ("application/x-npy; charset=binary", "application/json", "application/x-npy"),
        ("text/csv, application/json", "application/json", "text/csv"),
        ("text/html, application/json", "application/x-npy", "application/json"),
        ("application/json;q=0.4, text/csv;q=0.8", "application/json", "text/csv"),
        ("text/*", "application/json", "text/csv"),
        ("application/*", "application/x-npy", "application/x-npy"),
        ("text/html, */*;q=0.1", "application/json", "application/json"),
        ("application/json;q=0, */*", "application/json", "application/x-npy"),
        ("text/html", "application/json", None),
        ("application/json;q=0", "application/json", None),
        ("image/*", "application/json", None),
    ],
)
def test_choose_accept(accept, default, chosen):
    assert choose_accept(accept, OFFERED, default) == chosen


def test_choose_accept_when_user_code_encodes():
    # output_fn decides what it can write: the client's first concrete type goes to it.
    assert choose_accept("text/html, */*", None, "application/json") == "text/html"
    assert choose_accept("*/*", None, "application/json") == "application/json"
    assert choose_accept(None, None, "text/csv") == "text/csv"


def test_negotiate_decides_both_headers_and_their_handlers_or_raises_415_406():
    import pytest

    from serving.errors import NotAcceptable, UnsupportedMediaType
    from serving.contract.negotiation import negotiate

    json_handler, csv_handler = object(), object()
    handlers = {"application/json": json_handler, "text/csv": csv_handler}
    decided = negotiate(None, None, handlers, handlers, "application/json")
    assert (decided.content_type, list(decided.accepts)) == ("application/json", ["application/json"])
    assert decided.decoder is json_handler and decided.encoders == (("application/json", json_handler),)
    decided = negotiate("text/csv; charset=utf-8", "text/csv, */*;q=0.1", handlers, handlers,
                        "application/json")
    assert (decided.content_type, list(decided.accepts)) == ("text/csv", ["text/csv", "application/json"])
    # The encoders in the order they are tried: the first that can write the prediction answers.
    assert decided.decoder is csv_handler
    assert decided.encoders == (("text/csv", csv_handler), ("application/json", json_handler))
    with pytest.raises(UnsupportedMediaType) as refused:
        negotiate("image/gif", None, handlers, handlers, "application/json")
    assert refused.value.status_code == 415 and refused.value.supported == list(handlers)
    with pytest.raises(UnsupportedMediaType):
        negotiate("not a type", None, handlers, handlers, "application/json")
    with pytest.raises(NotAcceptable) as refused:
        negotiate(None, "image/png", handlers, handlers, "application/json")
    assert refused.value.status_code == 406
    # User code decodes and encodes: any well-formed type passes both ways, no handlers.
    decided = negotiate("image/gif", "text/html", None, None, "application/json")
    assert (decided.content_type, list(decided.accepts)) == ("image/gif", ["text/html"])
    assert decided.decoder is None and decided.encoders == ()


def test_what_only_the_answer_tells_is_refused_by_negotiation_too():
    import pytest

    from serving.errors import NotAcceptable
    from serving.contract.negotiation import negotiate

    decided = negotiate(None, "application/json", None, None, "application/json")
    decided.require("application/json", "fine")  # allowed: nothing raised
    with pytest.raises(NotAcceptable) as refused:
        decided.require("text/plain; charset=utf-8", "the model streams its answer as text/plain")
    assert refused.value.status_code == 406
    with pytest.raises(NotAcceptable, match="cannot be written as any acceptable type"):
        decided.none_could_write(["application/json: a set"])
