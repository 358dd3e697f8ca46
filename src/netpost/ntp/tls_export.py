"""The TLS exporter (RFC 5705 / RFC 8446 §7.5) of a Python `ssl` connection.

NTS-KE derives the NTP keys from the TLS session (RFC 8915 §5.1), but Python's `ssl` module
has no `export_keying_material` (CPython issue 87270).  OpenSSL has: this module calls
`SSL_export_keying_material` of the very libssl the `_ssl` extension is linked with, on the
`SSL *` that `_ssl`'s connection object holds.  Where that pointer sits is CPython's private
layout, so it is checked on every call: the `SSL *` found must report the same protocol
version and cipher as the connection does, or `ExporterUnavailable` is raised (NTS-KE then
answers with an internal-error record instead of keys that might be wrong).
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import sys


class ExporterUnavailable(RuntimeError):
    pass


_lib = ctypes.CDLL(_ssl.__file__)  # dlsym on it also finds the libssl it was linked with
_export = _lib.SSL_export_keying_material
_export.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                    ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_export.restype = ctypes.c_int
_get_version = _lib.SSL_get_version
_get_version.argtypes = [ctypes.c_void_p]
_get_version.restype = ctypes.c_char_p
_get_current_cipher = _lib.SSL_get_current_cipher
_get_current_cipher.argtypes = [ctypes.c_void_p]
_get_current_cipher.restype = ctypes.c_void_p
_cipher_name = _lib.SSL_CIPHER_get_name
_cipher_name.argtypes = [ctypes.c_void_p]
_cipher_name.restype = ctypes.c_char_p

# CPython's PySSLSocket (Modules/_ssl.c, 3.8-3.13): PyObject_HEAD, PyObject *Socket, SSL *ssl.
_SSL_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p) + ctypes.sizeof(ctypes.c_void_p)


def _ssl_pointer(conn: ssl.SSLObject | ssl.SSLSocket) -> int:
    inner = conn._sslobj  # type: ignore[union-attr]  # the _ssl._SSLSocket
    if inner is None or sys.implementation.name != "cpython":
        raise ExporterUnavailable("no OpenSSL connection object")
    pointer = ctypes.c_void_p.from_address(id(inner) + _SSL_OFFSET).value
    if not pointer:
        raise ExporterUnavailable("no SSL pointer")
    version = _get_version(pointer)
    cipher_ptr = _get_current_cipher(pointer)
    cipher = _cipher_name(cipher_ptr) if cipher_ptr else None
    expected = conn.cipher()
    if (version is None or version.decode() != conn.version() or expected is None
            or cipher is None or cipher.decode() != expected[0]):
        raise ExporterUnavailable("this Python's ssl object layout is not the one known")
    return pointer


def export_keying_material(conn: ssl.SSLObject | ssl.SSLSocket, label: bytes,
                           context: bytes, length: int) -> bytes:
    """RFC 5705 keying material of an established TLS connection."""
    pointer = _ssl_pointer(conn)
    out = ctypes.create_string_buffer(length)
    if _export(pointer, out, length, label, len(label), context, len(context), 1) != 1:
        raise ExporterUnavailable("SSL_export_keying_material failed")
    return out.raw
