"""The hub's wire format against its test vectors (tests/vectors/wire_v1.json), and
properties of the codec: valid commands decode to themselves, any JSON value travels as
publication data, and hostile text is refused with InvalidMessage, never another error."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backchannel.hub import codes, wire
from backchannel.hub.wire import (
    MAX_BATCH,
    METHODS,
    PROTOCOL_VERSION,
    ClientInfo,
    Command,
    InvalidMessage,
    Position,
    Publication,
    decode_commands,
    encode,
    encode_disconnect,
    encode_dropped,
    encode_error,
    encode_join,
    encode_leave,
    encode_publication,
    encode_result,
    encode_unsubscribe,
)

VECTORS_PATH = Path(__file__).parents[1] / "vectors" / "wire_v1.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of this module, vectors included, runs with both JSON codecs; those
    that compare orjson with the stdlib themselves run once, with orjson."""
    both = metafunc.function.__name__.startswith("test_both_codecs_")
    metafunc.parametrize("codec", ["orjson"] if both else ["stdlib", "orjson"], indirect=True)


@pytest.fixture(autouse=True)
def codec(request: pytest.FixtureRequest) -> Any:
    before = wire.codec()
    wire.use_codec(request.param)
    yield request.param
    wire.use_codec(before)


def by_name(section: str) -> pytest.MarkDecorator:
    cases = VECTORS[section]
    return pytest.mark.parametrize("case", cases, ids=[case["name"] for case in cases])


# --- the vectors file itself


def test_vectors_file_format() -> None:
    assert VECTORS["version"] == PROTOCOL_VERSION == 1
    assert set(VECTORS) == {"version", "commands", "replies", "pushes"}
    for section in ("commands", "replies", "pushes"):
        names = [case["name"] for case in VECTORS[section]]
        assert len(names) == len(set(names)), f"duplicate names in {section}"
    # The committed form: 2-space indentation, UTF-8 unescaped, a trailing newline.
    canonical = json.dumps(VECTORS, indent=2, ensure_ascii=False) + "\n"
    assert VECTORS_PATH.read_text(encoding="utf-8") == canonical


def test_vectors_cover_every_method_and_push() -> None:
    decoded = {
        command["method"]
        for case in VECTORS["commands"]
        for command in case["expect"].get("commands", [])
        if "error" not in command
    }
    assert decoded == set(METHODS)
    assert {case["push"] for case in VECTORS["pushes"]} == {
        "publication",
        "join",
        "leave",
        "unsubscribe",
        "dropped",
        "disconnect",
    }
    error_codes = {case["error"]["code"] for case in VECTORS["replies"] if "error" in case}
    assert set(codes.ERRORS) <= error_codes
    disconnect_codes = {
        case["input"]["code"] for case in VECTORS["pushes"] if case["push"] == "disconnect"
    }
    assert set(codes.DISCONNECTS) <= disconnect_codes
    expected = [case["expect"] for case in VECTORS["commands"]]
    assert {"invalid": True} in expected
    lengths = {len(e["commands"]) for e in expected if "commands" in e}
    assert MAX_BATCH in lengths


# --- commands


def check_decoded(got: list[Command], expect: list[dict[str, Any]]) -> None:
    assert len(got) == len(expect)
    for command, wanted in zip(got, expect, strict=True):
        assert command.id == wanted["id"]
        assert command.method == wanted["method"]
        if "error" in wanted:
            assert command.error is not None
            assert command.error.code == wanted["error"]["code"]
            assert command.error.message  # free text, but never empty
        else:
            assert command.error is None, command.error
            assert command.params == wanted["params"]


@by_name("commands")
def test_command_vector(case: dict[str, Any]) -> None:
    for text in (case["text"], case["text"].encode()):
        if case["expect"] == {"invalid": True}:
            with pytest.raises(InvalidMessage):
                decode_commands(text)
        else:
            check_decoded(decode_commands(text), case["expect"]["commands"])


# --- replies


@by_name("replies")
def test_reply_vector(case: dict[str, Any]) -> None:
    if "result" in case:
        text = encode_result(case["id"], case["result"])
        assert json.loads(text) == {"id": case["id"], "result": case["result"]}
    else:
        wanted = case["error"]
        error = codes.Error(wanted["code"], wanted["message"], wanted["temporary"])
        text = encode_error(case["id"], error)
        assert json.loads(text) == {"id": case["id"], "error": case["error"]}
    assert text == case["text"]


def test_vectors_hold_each_registry_error_as_it_is() -> None:
    errors = [case["error"] for case in VECTORS["replies"] if "error" in case]
    for error in codes.ERRORS.values():
        wanted = {"code": error.code, "message": error.message, "temporary": error.temporary}
        assert wanted in errors


def test_empty_result() -> None:
    assert encode_result(7) == encode_result(7, {}) == '{"id":7,"result":{}}'


# --- pushes


def client_info(obj: dict[str, Any]) -> ClientInfo:
    return ClientInfo(obj["client"], obj["user"], obj.get("info"))


def encode_push(kind: str, given: dict[str, Any]) -> str:
    if kind == "publication":
        publisher = client_info(given["info"]) if "info" in given else None
        publication = Publication(
            given["channel"],
            given["data"],
            given.get("offset", 0),
            given.get("epoch", ""),
            publisher,
        )
        return encode_publication(publication)
    if kind == "join":
        return encode_join(given["channel"], client_info(given["info"]))
    if kind == "leave":
        return encode_leave(given["channel"], client_info(given["info"]))
    if kind == "unsubscribe":
        return encode_unsubscribe(given["channel"], codes.Error(given["code"], given["reason"]))
    if kind == "disconnect":
        return encode_disconnect(codes.Disconnect(given["code"], given["reason"]))
    if kind == "dropped":
        position = Position(given["epoch"], given["offset"]) if "offset" in given else None
        return encode_dropped(given["channel"], position)
    raise AssertionError(f"unknown push {kind!r}")


@by_name("pushes")
def test_push_vector(case: dict[str, Any]) -> None:
    text = encode_push(case["push"], case["input"])
    assert text == case["text"]
    obj = json.loads(text)
    assert next(iter(obj)) == "push"
    assert obj.pop("push") == case["push"]
    if case["push"] == "disconnect":
        assert obj.pop("reconnect") is codes.Disconnect(obj["code"], obj["reason"]).reconnect
    assert obj == case["input"]


def test_publication_epoch_only_with_offset() -> None:
    # Without history (offset 0) a publication carries neither offset nor epoch.
    text = encode_publication(Publication("c", 1, 0, "ignored"))
    assert text == '{"push":"publication","channel":"c","data":1}'


def test_encode_joins_lines() -> None:
    lines = [case["text"] for case in VECTORS["replies"][:3] + VECTORS["pushes"][:3]]
    frame = encode(lines)
    assert not frame.endswith("\n")
    assert frame.split("\n") == lines
    assert encode([lines[0]]) == lines[0]


# --- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
PARAM_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(),
    bool: st.booleans(),
    int: st.integers(min_value=0, max_value=2**64),
    object: json_values,
}
ids = st.integers(min_value=1, max_value=2**53 - 1)


@st.composite
def valid_commands(draw: st.DrawFn) -> Command:
    method = draw(st.sampled_from(sorted(METHODS)))
    params: dict[str, Any] = {}
    for name, (kind, required) in METHODS[method].items():
        if required or draw(st.booleans()):
            params[name] = draw(PARAM_VALUES[kind])
    return Command(draw(ids), method, params)


def command_text(command: Command, ascii_only: bool, omit_empty: bool) -> str:
    obj: dict[str, Any] = {"id": command.id, "method": command.method}
    if command.params or not omit_empty:
        obj["params"] = command.params
    return json.dumps(obj, ensure_ascii=ascii_only)


@SETTINGS
@given(st.lists(valid_commands(), min_size=1, max_size=8), st.booleans(), st.booleans())
def test_valid_commands_decode_to_themselves(
    commands: list[Command], ascii_only: bool, omit_empty: bool
) -> None:
    text = "\n".join(command_text(command, ascii_only, omit_empty) for command in commands)
    assert decode_commands(text) == commands
    assert decode_commands(text.encode()) == commands


client_infos = st.builds(ClientInfo, st.text(), st.text(), json_values)  # info None: absent


@SETTINGS
@given(
    st.text(),
    json_values,
    st.integers(min_value=0, max_value=2**53 - 1),
    st.text(),
    st.none() | client_infos,
)
def test_any_json_value_travels_as_publication_data(
    channel: str, data: Any, offset: int, epoch: str, publisher: ClientInfo | None
) -> None:
    text = encode_publication(Publication(channel, data, offset, epoch, publisher))
    assert "\n" not in text  # one line of a frame
    obj = json.loads(text.encode("utf-8"))
    assert obj["push"] == "publication"
    assert obj["channel"] == channel
    assert obj["data"] == data
    if offset:
        assert (obj["offset"], obj["epoch"]) == (offset, epoch)
    else:
        assert "offset" not in obj and "epoch" not in obj
    if publisher is None:
        assert "info" not in obj
    else:
        assert obj["info"] == publisher.to_json()


def check_outcome(text: str | bytes) -> None:
    """Hostile input gives commands that respect the schema, or InvalidMessage."""
    try:
        commands = decode_commands(text)
    except InvalidMessage:
        return
    assert 1 <= len(commands) <= MAX_BATCH
    for command in commands:
        assert type(command.id) is int and 1 <= command.id < 2**53
        assert isinstance(command.method, str)
        if command.error is None:
            schema = METHODS[command.method]
            assert set(command.params) <= set(schema)
            assert all(name in command.params for name, (_, req) in schema.items() if req)
        else:
            assert command.error.code in (codes.METHOD_NOT_FOUND.code, codes.BAD_REQUEST.code)
            assert command.params == {}


@SETTINGS
@given(st.text())
def test_arbitrary_text_is_decoded_or_refused(text: str) -> None:
    check_outcome(text)


@SETTINGS
@given(st.binary())
def test_arbitrary_bytes_are_decoded_or_refused(data: bytes) -> None:
    check_outcome(data)


# Nearly valid commands reach deeper into the decoder than random text does.
members = st.dictionaries(
    st.sampled_from(["id", "method", "params", "extra"]),
    st.one_of(
        ids,
        st.integers(),
        st.sampled_from([*sorted(METHODS), "", "nope", "Ping"]),
        st.dictionaries(
            st.sampled_from(sorted({name for schema in METHODS.values() for name in schema})),
            json_values,
            max_size=4,
        ),
        json_values,
    ),
)
noise = st.sampled_from(["", " ", "\t", "\r", "{", "}", "[", "]", ",", '"', ":", "\\", "\ufeff"])


@SETTINGS
@given(st.lists(st.tuples(members, noise, st.booleans()), max_size=12))
def test_nearly_valid_commands_are_decoded_or_refused(
    lines: list[tuple[dict[str, Any], str, bool]],
) -> None:
    parts = [
        (json.dumps(obj) + extra) if append else (extra + json.dumps(obj))
        for obj, extra, append in lines
    ]
    check_outcome("\n".join(parts))


def nested(depth: int, kind: str) -> str:
    if kind == "arrays":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [10_000, 100_000])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize("where", ["bare", "as-data"])
def test_deeply_nested_json_is_refused(depth: int, kind: str, where: str) -> None:
    text = nested(depth, kind)
    if where == "as-data":
        text = '{"id":1,"method":"publish","params":{"channel":"c","data":' + text + "}}"
    with pytest.raises(InvalidMessage):
        decode_commands(text)
    with pytest.raises(InvalidMessage):
        decode_commands(text.encode())


def test_batch_limit() -> None:
    line = '{"id":1,"method":"ping"}'
    assert len(decode_commands("\n".join([line] * MAX_BATCH))) == MAX_BATCH
    with pytest.raises(InvalidMessage):
        decode_commands("\n".join([line] * (MAX_BATCH + 1)))
    # Blank lines are not commands and do not count.
    padded = "\n\n".join([line] * MAX_BATCH) + "\n \n\t\n"
    assert len(decode_commands(padded)) == MAX_BATCH


def test_invalid_message_is_a_peer_error() -> None:
    from backchannel.exceptions import PeerError

    with pytest.raises(PeerError):
        decode_commands("")


# Values JSON allows but that could not be sent on to other clients: refused at decode.

UNENCODABLE = {
    "NaN": '{"id":1,"method":"publish","params":{"channel":"c","data":NaN}}',
    "Infinity": '{"id":1,"method":"publish","params":{"channel":"c","data":Infinity}}',
    "-Infinity": '{"id":1,"method":"publish","params":{"channel":"c","data":-Infinity}}',
    "1e400": '{"id":1,"method":"publish","params":{"channel":"c","data":1e400}}',
    "lone surrogate": '{"id":1,"method":"publish","params":{"channel":"c","data":"\\ud800"}}',
    "lone surrogate in channel": (
        '{"id":1,"method":"publish","params":{"channel":"\\udfff","data":1}}'
    ),
}


@pytest.mark.parametrize("text", list(UNENCODABLE.values()), ids=list(UNENCODABLE))
def test_accepted_publish_can_be_sent_back(text: str) -> None:
    try:
        commands = decode_commands(text)
    except InvalidMessage:
        return
    command = commands[0]
    if command.error is not None:
        assert command.error.code == 107
        return
    out = encode_publication(Publication(command.params["channel"], command.params["data"]))
    out.encode("utf-8")
    value = json.loads(out)["data"]
    assert not (isinstance(value, float) and not math.isfinite(value))


def test_params_nested_deeper_than_the_limit_are_refused() -> None:
    deep = "[" * 40 + "]" * 40
    (command,) = decode_commands(
        '{"id":1,"method":"publish","params":{"channel":"c","data":' + deep + "}}"
    )
    assert command.error is not None and command.error.code == 107
    ok = "[" * 30 + "]" * 30
    (command,) = decode_commands(
        '{"id":1,"method":"publish","params":{"channel":"c","data":' + ok + "}}"
    )
    assert command.error is None


# --- the two JSON codecs


def with_stdlib(function: Any, argument: Any) -> Any:
    """``function(argument)`` with the stdlib codec, then back to the test's codec."""
    before = wire.codec()
    wire.use_codec("stdlib")
    try:
        return function(argument)
    finally:
        wire.use_codec(before)


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(has_float(item) for item in value)
    return False


@SETTINGS
@given(json_values)
def test_both_codecs_encode_any_value_alike(value: Any) -> None:
    """orjson and the stdlib give the same characters, or (floats, whose shortest forms
    are spelled differently: 1e+16 and 1e16) the same JSON value."""
    mine = wire.dumps(value)
    stdlib = with_stdlib(wire.dumps, value)
    assert json.loads(mine) == json.loads(stdlib) == value
    if not has_float(value):
        assert mine == stdlib


@SETTINGS
@given(st.lists(valid_commands(), min_size=1, max_size=4), st.booleans())
def test_both_codecs_decode_any_command_alike(commands: list[Command], ascii_only: bool) -> None:
    text = "\n".join(command_text(command, ascii_only, False) for command in commands)
    assert decode_commands(text) == with_stdlib(decode_commands, text) == commands


@pytest.mark.parametrize(
    "line",
    [
        '{"id":1,"method":"send","params":{"data":"\\ud800"}}',  # a lone surrogate: 107
        '{"id":1,"method":"send","params":{"data":123456789012345678901234567890}}',
        '{"id":1,"method":"send","params":{"data":18446744073709551616}}',  # 2**64
        '{"id":1,"method":"send","params":{"data":1e400}}',  # out of range: 107
    ],
)
def test_both_codecs_answer_edge_texts_alike(line: str) -> None:
    """Texts orjson reads differently from the stdlib (or not at all) get the stdlib's
    answer under both codecs."""
    assert decode_commands(line) == with_stdlib(decode_commands, line)


def test_an_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="BACKCHANNEL_JSON"):
        wire.use_codec("simdjson")


@SETTINGS
@given(
    st.text(),
    json_values,
    st.integers(min_value=0, max_value=2**53 - 1),
    st.text(),
    st.none() | client_infos,
)
def test_a_publication_with_its_data_encoded_gives_the_same_push(
    channel: str, data: Any, offset: int, epoch: str, publisher: ClientInfo | None
) -> None:
    plain = Publication(channel, data, offset, epoch, publisher)
    encoded = Publication(channel, data, offset, epoch, publisher, wire.dumps(data))
    assert encode_publication(encoded) == encode_publication(plain)
    assert encode_publication(plain) == wire.dumps({"push": "publication", **plain.to_json()})


def test_the_push_reuses_the_encoded_data_as_it_is() -> None:
    """The data's encoded characters go into the push untouched: they are not encoded
    again (an encoding with extra spaces shows it)."""
    publication = Publication("c", {"a": 1}, encoded='{"a": 1}')
    assert encode_publication(publication) == '{"push":"publication","channel":"c","data":{"a": 1}}'
