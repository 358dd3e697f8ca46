"""PGP/MIME (RFC 3156): multipart/signed and multipart/encrypted, built and taken apart
with `email` (policy.default); the octets signed are the ones the generator writes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP

import pysequoia

from netpost.agent import AgentError
from netpost.agent.pgp import Keyring, cert_label, first_line, key_ids_of, no_panic
from netpost.agent.render import parse

# Content fields move into the protected part; the rest stay outside (RFC 3156 5, 4).
CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition",
                  "content-id", "content-description", "content-language")
MICALG = {"SHA256": "pgp-sha256", "SHA384": "pgp-sha384", "SHA512": "pgp-sha512",
          "SHA224": "pgp-sha224", "SHA1": "pgp-sha1"}


def _split(msg: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    """(outer: the message's other fields, inner: its content as a MIME entity)."""
    inner = EmailMessage(policy=msg.policy)
    outer = EmailMessage(policy=msg.policy)
    for name, value in msg.items():
        if name.lower() in CONTENT_FIELDS:
            inner[name] = value
        elif name.lower() != "mime-version":
            outer[name] = value
    inner.set_payload(msg.get_payload())
    if not inner.get("Content-Type"):
        inner["Content-Type"] = "text/plain; charset=us-ascii"
    outer["MIME-Version"] = "1.0"
    return outer, inner


def first_part_octets(raw: bytes, boundary: str) -> bytes:
    """The octets of the first body part of the multipart whose delimiter is `boundary`,
    in canonical CRLF form: from after the first delimiter line's CRLF up to, not
    including, the CRLF before the next delimiter (RFC 2046 5.1.1, RFC 3156 5)."""
    data = re.sub(rb"\r?\n", b"\r\n", raw)
    delim = b"--" + boundary.encode("ascii", "replace")
    start = re.search(rb"(?:^|\r\n)" + re.escape(delim) + rb"[ \t]*\r\n", data)
    if start is None:
        raise AgentError("malformed multipart/signed message: no first part")
    end = data.find(b"\r\n" + delim, start.end())
    if end < 0:
        raise AgentError("malformed multipart/signed message: the first part has no end")
    return data[start.end():end]


def _hash_name(signature: bytes) -> str:
    algo = repr(pysequoia.Sig.from_bytes(signature).hash_algorithm).rpartition(".")[2]
    return MICALG.get(algo.upper(), "pgp-" + algo.lower())


def sign_message(msg: EmailMessage, signer: pysequoia.PySigner) -> EmailMessage:
    """msg as multipart/signed (RFC 3156 5): its content entity, then the detached
    signature over that entity's octets as written on the wire."""
    outer, inner = _split(msg)
    signature_part = EmailMessage(policy=msg.policy)
    outer.set_payload([inner, signature_part])
    outer["Content-Type"] = 'multipart/signed; protocol="application/pgp-signature"'
    wire = outer.as_bytes(policy=SMTP)  # the generator picks the boundary here
    boundary = outer.get_boundary()
    assert boundary is not None
    signed = first_part_octets(wire, boundary)
    try:
        signature = pysequoia.sign(signer, signed, mode=pysequoia.SignatureMode.DETACHED)
    except RuntimeError as exc:
        raise AgentError(f"cannot sign: {first_line(exc)}") from None
    outer.set_param("micalg", _hash_name(signature))
    signature_part.set_content(signature, maintype="application", subtype="pgp-signature",
                               cte="7bit", disposition="attachment",
                               filename="signature.asc")
    del signature_part["MIME-Version"]
    outer.set_payload([inner, signature_part])
    if first_part_octets(outer.as_bytes(policy=SMTP), boundary) != signed:
        raise AgentError("internal error: the signed part changed after signing")
    return outer


def encrypt_message(msg: EmailMessage, recipients: Sequence[pysequoia.Cert],
                    signer: pysequoia.PySigner | None = None) -> EmailMessage:
    """msg as multipart/encrypted (RFC 3156 4); with `signer`, signed and encrypted in one
    OpenPGP message (RFC 3156 6.2)."""
    outer, inner = _split(msg)
    plain = inner.as_bytes(policy=SMTP)
    try:
        armored = pysequoia.encrypt(plain, list(recipients), signer=signer)
    except RuntimeError as exc:
        raise AgentError(f"cannot encrypt: {first_line(exc)}") from None
    control = EmailMessage(policy=msg.policy)
    control.set_content(b"Version: 1\r\n", maintype="application", subtype="pgp-encrypted",
                        cte="7bit")
    data = EmailMessage(policy=msg.policy)
    data.set_content(armored, maintype="application", subtype="octet-stream", cte="7bit",
                     disposition="inline", filename="encrypted.asc")
    for part in (control, data):
        del part["MIME-Version"]
    outer["Content-Type"] = 'multipart/encrypted; protocol="application/pgp-encrypted"'
    outer.set_payload([control, data])
    return outer


@dataclass
class Opened:
    """What PGP/MIME processing found: the content to show and how it was protected."""

    content: EmailMessage
    notes: list[str] = field(default_factory=list)


def _parts(msg: EmailMessage) -> list[EmailMessage]:
    payload = msg.get_payload()
    if not isinstance(payload, list):
        raise AgentError(f"malformed {msg.get_content_type()} message: it has no parts")
    return [p for p in payload if isinstance(p, EmailMessage)]


def verify(raw: bytes, msg: EmailMessage, keyring: Keyring) -> Opened:
    """Check a multipart/signed message (RFC 3156 5); a bad or unverifiable signature is
    an error."""
    parts = _parts(msg)
    if len(parts) != 2 or parts[1].get_content_type() != "application/pgp-signature":
        raise AgentError("malformed multipart/signed message: expected the content and an "
                         "application/pgp-signature part")
    boundary = msg.get_boundary()
    if boundary is None:
        raise AgentError("malformed multipart/signed message: no boundary")
    signed = first_part_octets(raw, boundary)
    sig_bytes = parts[1].get_payload(decode=True)
    if not isinstance(sig_bytes, bytes):
        raise AgentError("malformed multipart/signed message: empty signature part")
    try:
        with no_panic():
            sig = pysequoia.Sig.from_bytes(sig_bytes)
    except (RuntimeError, ValueError) as exc:
        raise AgentError(f"the signature part is not an OpenPGP signature: "
                         f"{first_line(exc)}") from None
    keyring.asked.clear()
    keyring.found.clear()
    try:
        with no_panic():
            result = pysequoia.verify(bytes=signed, store=keyring.lookup, signature=sig)
    except RuntimeError as exc:
        if not keyring.found:
            issuer = (sig.issuer_fingerprint or sig.issuer_key_id or "?").upper()
            raise AgentError(f"cannot check the signature: no key {issuer} in the key ring "
                             "(import the signer's key)") from None
        raise AgentError(f"BAD signature claiming to be from {cert_label(keyring.found[0])}: "
                         f"{first_line(exc)}") from None
    if not result.valid_sigs:  # pysequoia raises then; never "good" without one regardless
        raise AgentError("cannot check the signature: pysequoia found no valid signature")
    notes = [f"PGP: good signature from {_signer(result, keyring)}"]
    content = parse(signed)
    return Opened(content, notes)


def _signer(result: pysequoia.Decrypted, keyring: Keyring) -> str:
    for valid in result.valid_sigs:
        fpr = str(getattr(valid, "certificate", "")).lower()
        for cert in keyring.found:
            if cert.fingerprint == fpr:
                return cert_label(cert)
    return "(unknown)"


def decrypt(msg: EmailMessage, keyring: Keyring) -> Opened:
    """Open a multipart/encrypted message (RFC 3156 4) with the first secret key that
    can; a signature inside (6.2), or a multipart/signed inside (6.1), is checked."""
    parts = _parts(msg)
    if len(parts) != 2 or parts[0].get_content_type() != "application/pgp-encrypted":
        raise AgentError("malformed multipart/encrypted message: expected an "
                         "application/pgp-encrypted part and the encrypted data")
    ciphertext = parts[1].get_payload(decode=True)
    if not isinstance(ciphertext, bytes) or not ciphertext.strip():
        raise AgentError("malformed multipart/encrypted message: no encrypted data")
    secrets = keyring.secret_keys()
    if not secrets:
        raise AgentError("the message is encrypted and the key ring has no secret key")
    recipients = _recipient_key_ids(ciphertext)
    if recipients is not None:  # only the keys it is for: no passphrase asked for others
        secrets = [t for t in secrets if key_ids_of(t.extract_certificate()) & recipients]
        if not secrets:
            raise AgentError("cannot decrypt: it is not encrypted to any secret key in the "
                             f"key ring (but to {', '.join(sorted(recipients)).upper()})")
    last_error = "no secret key in the key ring can decrypt it"
    for tsk in secrets:
        keyring.asked.clear()
        keyring.found.clear()
        decryptor = keyring.decryptor(tsk)
        try:
            with no_panic():
                result = pysequoia.decrypt(ciphertext, decryptor=decryptor, store=keyring.lookup)
        except RuntimeError as exc:
            text = first_line(exc)
            if "No key to decrypt" in text or "No session key" in text \
                    or "No suitable decryption subkey" in text:
                last_error = ("it is not encrypted to any secret key in the key ring, or it "
                              "was damaged")
                continue
            if "Signature verification failed" in text or "Unexpected message structure" \
                    in text:
                return _decrypted_unverified(ciphertext, tsk, decryptor, keyring, text)
            raise AgentError(f"cannot decrypt: {text}") from None
        assert result.bytes is not None
        notes = [f"PGP: decrypted with {cert_label(tsk.extract_certificate())}"]
        if result.valid_sigs:
            notes.append(f"PGP: good signature from {_signer(result, keyring)}")
        return _inner(result.bytes, notes, keyring)
    raise AgentError(f"cannot decrypt: {last_error}")


def _recipient_key_ids(ciphertext: bytes) -> set[str] | None:
    """The key IDs (lowercase hex) the message's PKESKs name, or None when that is not
    known (a wildcard ID, a form this does not read): then every secret key is tried."""
    from netpost.agent.inner import dearmor
    from netpost.agent.rfc4880 import TAG_PKESK, packets, pkesk_v3

    try:
        found = [p.body for p in packets(dearmor(ciphertext), partial=True)
                 if p.tag == TAG_PKESK]
    except ValueError:  # FormatError among them
        return None
    ids = set()
    for body in found:
        pkesk = pkesk_v3(body)
        if pkesk is None or pkesk[0] == b"\0" * 8:
            return None
        ids.add(pkesk[0].hex())
    return ids or None


def _decrypted_unverified(ciphertext: bytes, tsk: pysequoia.Tsk,
                          decryptor: pysequoia.PyDecryptor, keyring: Keyring,
                          why: str) -> Opened:
    """pysequoia's decrypt with a `store` insists on a good signature, and cannot check one
    inside compressed data (GnuPG compresses by default): sort out which case this was, and
    check the compressed kind with `inner`."""
    asked, found = set(keyring.asked), list(keyring.found)
    compressed = "Unexpected message structure" in why
    if found and not compressed:  # we had the signer's key and the signature did not hold
        raise AgentError(f"BAD signature in the encrypted message, claiming to be from "
                         f"{cert_label(found[0])}")
    try:
        with no_panic():
            result = pysequoia.decrypt(ciphertext, decryptor=decryptor)
    except RuntimeError as exc:
        raise AgentError(f"cannot decrypt: {first_line(exc)}") from None
    assert result.bytes is not None
    notes = [f"PGP: decrypted with {cert_label(tsk.extract_certificate())}"]
    signer = ", ".join(sorted(asked)).upper()
    if asked and compressed:
        notes.append(_check_compressed(ciphertext, tsk, keyring, result.bytes, signer))
    elif asked:
        notes.append(f"PGP: signed by key {signer}, which is not in the key ring: NOT "
                     "verified")
    return _inner(result.bytes, notes, keyring)


def _check_compressed(ciphertext: bytes, tsk: pysequoia.Tsk, keyring: Keyring, plain: bytes,
                      signer: str) -> str:
    """The note on a signature inside compressed data: `inner` takes the signed message out
    of the encryption and pysequoia checks it; it counts only over exactly the content
    pysequoia's decryption gave."""
    from cryptography.exceptions import UnsupportedAlgorithm

    from netpost.agent.inner import signed_inner
    from netpost.agent.rfc4880 import FormatError

    passphrase = keyring.passphrases.get(tsk.extract_certificate().fingerprint)
    try:
        signed = signed_inner(ciphertext, bytes(tsk), passphrase, len(plain) + (1 << 20))
    except (FormatError, ValueError, UnsupportedAlgorithm) as exc:
        return (f"PGP: signed by key {signer} inside compressed data, which netpost could not "
                f"take out ({exc}): NOT verified")
    keyring.asked.clear()
    keyring.found.clear()
    try:
        with no_panic():
            checked = pysequoia.verify(bytes=signed, store=keyring.lookup)
    except RuntimeError as exc:
        if not keyring.found:
            return f"PGP: signed by key {signer}, which is not in the key ring: NOT verified"
        if "Unexpected message structure" in str(exc):
            return (f"PGP: signed by key {signer} in a message structure netpost does not "
                    "check: NOT verified")
        raise AgentError(f"BAD signature in the encrypted message, claiming to be from "
                         f"{cert_label(keyring.found[0])}") from None
    if not checked.valid_sigs:  # pysequoia raises then; never "good" without one regardless
        return f"PGP: signed by key {signer}, no valid signature found: NOT verified"
    if checked.bytes is None or checked.bytes != plain:
        return (f"PGP: signed by key {signer}, but the signed content is not the decrypted "
                "content: NOT verified")
    return f"PGP: good signature from {_signer(checked, keyring)}"


def _inner(plain: bytes, notes: list[str], keyring: Keyring) -> Opened:
    content = parse(plain)
    if content.get_content_type() == "multipart/signed":  # RFC 3156 6.1
        opened = verify(plain, content, keyring)
        return Opened(opened.content, notes + opened.notes)
    return Opened(content, notes)


def open_message(raw: bytes, msg: EmailMessage, keyring: Keyring | None) -> Opened:
    """The content to show: decrypted and/or verified when the message is PGP/MIME."""
    kind = msg.get_content_type()
    if kind not in ("multipart/signed", "multipart/encrypted"):
        return Opened(msg)
    if keyring is None:
        raise AgentError("a PGP/MIME message needs the key ring")
    if kind == "multipart/signed":
        return verify(raw, msg, keyring)
    return decrypt(msg, keyring)
