"""The Nylas signature check: the right secret over the exact bytes verifies, anything else
is ``BadSignature`` (never another exception)."""

from __future__ import annotations

from hypothesis import assume, example, given
from hypothesis import strategies as st

from tests.properties.strategies import FAST
from workflows.nylas.webhooks import BadSignature, sign, verify

# Secrets as an operator sets them: printable, so never two that differ only by trailing
# NULs (which HMAC pads keys with, and so cannot tell apart).
secrets = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=80)
raws = st.binary(max_size=2000)
versions = st.sampled_from(["v2", "v3"])
HEX = "0123456789abcdef"


def rejected(raw: bytes, signature: str | None, keys: dict[str, str]) -> bool:
    try:
        verify(raw, signature, keys)
    except BadSignature:
        return True
    return False


@FAST
@given(raw=raws, secret=secrets, other=secrets, version=versions, data=st.data())
def test_the_right_secret_over_the_exact_bytes_verifies(
    raw: bytes, secret: str, other: str, version: str, data: st.DataObject
) -> None:
    assume(other != secret)
    signature = sign(secret, raw)
    assert len(signature) == 64 and set(signature) <= set(HEX)
    keys = {version: secret}
    if data.draw(st.booleans(), label="both versions configured"):
        keys["v3" if version == "v2" else "v2"] = other
    # Nylas sends lowercase hex; case and surrounding blanks do not matter.
    sent = data.draw(st.sampled_from([signature, signature.upper(), f" {signature}\t"]))
    assert verify(raw, sent, keys) == version


@FAST
@given(raw=raws.filter(bool), secret=secrets, data=st.data())
def test_changing_one_byte_of_the_body_fails(raw: bytes, secret: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = raw[:i] + bytes([raw[i] ^ flip]) + raw[i + 1 :]
    assert rejected(changed, sign(secret, raw), {"v3": secret})


@FAST
@given(raw=raws, secret=secrets, data=st.data())
def test_changing_the_body_length_fails(raw: bytes, secret: str, data: st.DataObject) -> None:
    extra = data.draw(st.binary(min_size=1, max_size=4), label="appended")
    signature = sign(secret, raw)
    assert rejected(raw + extra, signature, {"v3": secret})
    if raw:
        assert rejected(raw[:-1], signature, {"v3": secret})


@FAST
@given(raw=raws, secret=secrets, data=st.data())
def test_changing_one_character_of_the_signature_fails(
    raw: bytes, secret: str, data: st.DataObject
) -> None:
    signature = sign(secret, raw)
    i = data.draw(st.integers(0, 63), label="position")
    other = data.draw(
        st.sampled_from(HEX).filter(lambda c: c != signature[i])
        | st.characters().filter(lambda c: c.lower() not in HEX and not c.isspace()),
        label="replacement",
    )
    assert rejected(raw, signature[:i] + other + signature[i + 1 :], {"v3": secret})
    assert rejected(raw, signature[:i] + signature[i + 1 :], {"v3": secret})  # odd length
    assert rejected(raw, signature + other, {"v3": secret})


@FAST
@given(raw=raws, secret=secrets, other=secrets)
def test_another_secret_fails(raw: bytes, secret: str, other: str) -> None:
    assume(other != secret)
    assert rejected(raw, sign(other, raw), {"v3": secret, "v2": secret + "x"})


@FAST
@given(raw=raws, signature=st.text(st.characters(codec=None), max_size=100), secret=secrets)
@example(raw=b"{}", signature="\udcff" * 64, secret="s")  # a 0xff byte as aiohttp decodes it
@example(raw=b"{}", signature="é" * 64, secret="s")
@example(raw=b"{}", signature="abc", secret="s")
@example(raw=b"{}", signature="", secret="s")
def test_any_text_as_signature_is_rejected_without_another_exception(
    raw: bytes, signature: str, secret: str
) -> None:
    assume(signature.strip().lower() != sign(secret, raw))
    assert rejected(raw, signature, {"v3": secret, "v2": secret + "2"})


def test_a_missing_signature_or_secret_is_rejected() -> None:
    assert rejected(b"{}", None, {"v3": "s"})
    assert rejected(b"{}", "", {"v3": "s"})
    assert rejected(b"{}", sign("s", b"{}"), {})
