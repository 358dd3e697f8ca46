"""File reads for the event loop: from the page cache at once, from the disk in a worker.

A server that sends files (FTP RETR over TLS, SFTP READ, HTTP downloads) reads them piece by
piece.  Handing every piece to a worker thread costs more than the read itself when the file
is in the page cache, as a file being served usually is; reading on the event loop would stall
every other connection whenever the disk has to be waited for.  `pread` does both: it asks
the kernel for what is cached without waiting (preadv2 with RWF_NOWAIT, Linux 4.14; buffered
files since 5.9) and sends only a miss to a worker.  Where RWF_NOWAIT is unknown every read
goes to a worker, as before.
"""

from __future__ import annotations

import asyncio
import errno
import os

_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


async def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` octets of `fd` at `offset` (fewer near the end or when only part of the
    range is cached; b"" at the end of the file)."""
    global _NOWAIT
    if _NOWAIT is not None and size > 0:
        buffer = bytearray(size)
        try:
            n = os.preadv(fd, [buffer], offset, _NOWAIT)
        except BlockingIOError:
            pass  # not (all) in the page cache: the disk must be waited for
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _NOWAIT = None  # this kernel or file system cannot: always use a worker
        else:
            if n > 0:
                # One copy into immutable bytes (what TLS, asyncssh and ASGI take): still far
                # cheaper than a thread hop.
                return bytes(memoryview(buffer)[:n])
            # 0: the end of the file, or nothing cached yet at `offset`; the worker tells
    return await asyncio.to_thread(os.pread, fd, size, offset)
