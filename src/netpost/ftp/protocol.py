"""FTP control-connection engine, sans-I/O (see docs/engines.md).

RFC 959 (with RFC 1123 4.1's corrections), RFC 2389 (FEAT, OPTS), RFC 2428 (EPRT, EPSV),
RFC 2577 (security: no bounce, no user probing, login attempts), RFC 2640 (UTF-8 names),
RFC 3659 (SIZE, MDTM, MLST/MLSD, REST STREAM) and RFC 4217 (AUTH TLS, PBSZ, PROT).

The engine owns the command grammar, the order of replies and the session state (login, the
current directory, TYPE, REST, RNFR, PROT, where the next data connection comes from, and
whether a transfer is running).  It never touches sockets, files or the clock: what needs the
file tree or a data connection becomes an event that the session answers.

A transfer (RETR, STOR, APPE, STOU, LIST, NLST, MLSD) runs beside the control connection:
after `transfer_started()` the engine keeps reading and answers ABOR (an `Abort` event), STAT,
NOOP and QUIT at once (RFC 959 4.1.3, 5.4: "the server may hold other commands until the
transfer is over"), and holds everything else until `transfer_done()`.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from netpost.net.hosts import same_host

__all__ = [
    "Abort",
    "ActiveTarget",
    "Event",
    "FTPConnection",
    "FTPSettings",
    "FileRequest",
    "Login",
    "PassiveRequest",
    "StartTLS",
    "TransferRequest",
]

TransferVerb = Literal["RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"]
FileVerb = Literal["CWD", "MKD", "RMD", "DELE", "RNFR", "RNTO", "SIZE", "MDTM", "MLST", "STAT",
                   "CHMOD"]

_UPLOADS = frozenset({"STOR", "APPE", "STOU"})
_TRANSFERS = frozenset({"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"})
_FILE_COMMANDS = frozenset({"CWD", "XCWD", "CDUP", "XCUP", "MKD", "XMKD", "RMD", "XRMD",
                            "DELE", "RNFR", "RNTO", "SIZE", "MDTM", "MLST"})
# RFC 1123 4.1.3.1: the X... forms of RFC 775 are still sent by some clients.
_ALIASES = {"XCWD": "CWD", "XCUP": "CDUP", "XMKD": "MKD", "XRMD": "RMD", "XPWD": "PWD"}
# Answered before login (RFC 959 4.1.1 and RFC 4217 4 let a client secure and learn first).
_BEFORE_LOGIN = frozenset({"USER", "PASS", "ACCT", "AUTH", "PBSZ", "PROT", "FEAT", "SYST",
                           "HELP", "NOOP", "QUIT", "OPTS", "CCC"})
# What a client may send while a transfer runs, answered at once.
_DURING_TRANSFER = frozenset({"ABOR", "STAT", "NOOP", "QUIT"})
_KNOWN = frozenset({
    "USER", "PASS", "ACCT", "CWD", "XCWD", "CDUP", "XCUP", "PWD", "XPWD", "MKD", "XMKD", "RMD",
    "XRMD", "DELE", "RNFR", "RNTO", "LIST", "NLST", "MLSD", "MLST", "RETR", "STOR", "APPE",
    "STOU", "REST", "ABOR", "TYPE", "MODE", "STRU", "SYST", "STAT", "HELP", "NOOP", "QUIT",
    "PORT", "PASV", "EPRT", "EPSV", "FEAT", "OPTS", "SIZE", "MDTM", "AUTH", "PBSZ", "PROT",
    "CCC", "ALLO", "REIN", "SMNT", "SITE",
})


@dataclass(frozen=True)
class FTPSettings:
    client_address: str  # the control connection's peer: the only data-connection host
    tls_available: bool = True  # AUTH TLS may be offered (no TLS on the connection yet)
    tls_active: bool = False  # implicit FTPS: TLS from the first byte
    allow_plaintext_login: bool = False  # USER/PASS before TLS (loopback development only)
    require_protected_data: bool = True  # on a TLS connection, data must be PROT P too
    max_line: int = 4096  # octets per command line (paths can be long)
    max_errors: int = 20
    max_login_attempts: int = 3  # RFC 2577 5: then the connection closes
    server_name: str = "netpost"


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS:
    """AUTH TLS accepted (234 queued): flush, upgrade, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class Login:
    """Check the password; then accept_login() or reject_login()."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class PassiveRequest:
    """PASV (extended False) or EPSV: open a passive port, then passive_ready() or reply()."""

    extended: bool


@dataclass(frozen=True, slots=True)
class ActiveTarget:
    """Where an active-mode data connection goes (PORT/EPRT, already checked)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class FileRequest:
    """A command on the file tree; answer with reply() (and set_cwd() after a CWD).

    `path` is the client's argument as given (may be relative or empty); RNTO also carries the
    RNFR path in `source`."""

    verb: FileVerb
    path: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A data transfer: check the path, then transfer_started() (150) and, when the data has
    moved, transfer_done(); or reply() with the error (no transfer).

    `active` is None for a passive connection (the one opened by the last PASV/EPSV)."""

    verb: TransferVerb
    path: str
    offset: int  # REST (0 without one)
    ascii: bool  # TYPE A: line ends converted (RFC 959 3.1.1.1)
    protected: bool  # PROT P: the data connection is TLS (RFC 4217 9)
    active: ActiveTarget | None


@dataclass(frozen=True, slots=True)
class Abort:
    """ABOR while a transfer runs: stop it, then transfer_done(426, ...)."""


Event = StartTLS | Login | PassiveRequest | FileRequest | TransferRequest | Abort

_State = Literal["greeting", "user", "password", "ready", "closed"]


class FTPConnection:
    """One FTP control connection."""

    def __init__(self, settings: FTPSettings,
                 trace: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self._trace = trace
        self._in = bytearray()
        self._out: list[bytes] = []
        self._held: deque[tuple[str, str]] = deque()  # commands parsed while busy
        self._discarding = False  # inside an overlong line, up to its LF
        self.closed = False
        self.tls_active = settings.tls_active
        self._state: _State = "user"
        self._user = ""
        self.account: str | None = None  # who logged in
        self.cwd = "/"
        self.ascii = False  # TYPE A; TYPE I by default is what clients expect today
        self._rest = 0
        self._rest_fresh = False  # REST applies to the command right after it
        self._rnfr: str | None = None
        self._pbsz = False
        self.protected = False  # PROT P
        self._active: ActiveTarget | None = None
        self._passive = False  # a passive port is open for the next transfer
        self._epsv_all = False
        self._utf8 = True
        self._errors = 0
        self._failed_logins = 0
        self._waiting: Event | None = None  # answer awaited from the session
        self.transferring = False
        self._abort_pending = False  # ABOR came during the transfer: 226 after its reply
        self._quit_pending = False

    # --- I/O surface ------------------------------------------------------------------------

    def greeting(self) -> None:
        self._reply(220, f"{self.settings.server_name} FTP server ready")

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._close()
            return
        self._in += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        while not self.closed:
            if self._waiting is not None and not self.transferring:
                return None
            command = self._next_command()
            if command is None:
                return None
            verb, arg = command
            event = self._dispatch(verb, arg)
            if event is not None:
                if not isinstance(event, Abort):
                    self._waiting = event
                return event
        return None

    # --- answers from the session -------------------------------------------------------------

    def tls_started(self) -> None:
        self.tls_active = True
        self._in.clear()  # RFC 4217 / CVE-2011-0411: nothing pipelined in plaintext counts
        self._held.clear()
        self._done()

    def accept_login(self, account: str) -> None:
        self.account = account
        self._state = "ready"
        self._failed_logins = 0
        self._reply(230, "Login successful")
        self._done()

    def reject_login(self) -> None:
        self._failed_logins += 1
        self._state = "user"
        if self._failed_logins >= self.settings.max_login_attempts:
            self._reply(421, "Too many failed logins, closing connection")
            self._close()
        else:
            self._reply(530, "Login incorrect")
        self._done()

    def passive_ready(self, host: str, port: int) -> None:
        waiting = self._waiting
        assert isinstance(waiting, PassiveRequest)
        self._passive, self._active = True, None
        if waiting.extended:
            # RFC 2428 3: the network address is the control connection's.
            self._reply(229, f"Entering Extended Passive Mode (|||{port}|)")
        else:
            numbers = host.split(".") + [str(port >> 8), str(port & 0xFF)]
            self._reply(227, f"Entering Passive Mode ({','.join(numbers)})")
        self._done()

    def close(self, text: str) -> None:
        """End the session from the server's side (idle, shutting down): 421 (RFC 959 4.2)."""
        if not self.closed:
            self._reply(421, text)
            self._close()

    def set_cwd(self, vpath: str) -> None:
        """After a successful CWD/CDUP: the new current directory (virtual, absolute)."""
        self.cwd = vpath

    def reply(self, code: int, text: str | Sequence[str]) -> None:
        """Answer the pending FileRequest / PassiveRequest, or refuse a TransferRequest."""
        waiting = self._waiting
        if isinstance(waiting, FileRequest) and waiting.verb == "RNFR" and code == 350:
            self._rnfr = waiting.path
        if isinstance(waiting, TransferRequest):
            self._passive = False  # the port (if any) is spent
            self._active = None
        self._reply(code, text)
        self._done()

    def transfer_started(self, text: str) -> None:
        """The data connection is about to open (150)."""
        assert isinstance(self._waiting, TransferRequest)
        self._passive = False
        self._active = None
        self.transferring = True
        self._reply(150, text)

    def transfer_done(self, code: int, text: str) -> None:
        """The transfer ended: 226/250 on success, 425/426/451/452/552 on failure."""
        self.transferring = False
        self._reply(code, text)
        if self._abort_pending:
            self._abort_pending = False
            self._reply(226, "ABOR command successful")
        self._done()
        if self._quit_pending:
            self._quit()

    # --- parsing ------------------------------------------------------------------------------

    def _next_command(self) -> tuple[str, str] | None:
        if self._held and not self.transferring:
            return self._held.popleft()
        while not self.closed:  # an error may have closed it (421) mid-buffer
            end = self._in.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._in.clear()
                    return None
                del self._in[:end + 1]
                self._discarding = False
                continue
            if end < 0:
                if len(self._in) > self.settings.max_line:
                    self._in.clear()
                    self._discarding = True
                    self._error(500, "Command line too long")
                return None
            if end + 1 > self.settings.max_line:
                del self._in[:end + 1]
                self._error(500, "Command line too long")
                continue
            raw = bytes(self._in[:end + 1])
            del self._in[:end + 1]
            command = self._parse(raw)
            if command is None:
                continue
            if self.transferring and command[0] not in _DURING_TRANSFER:
                # RFC 959 5.4: held until the transfer is over.
                self._held.append(command)
                continue
            return command
        return None

    def _parse(self, raw: bytes) -> tuple[str, str] | None:
        line = _strip_telnet(raw.rstrip(b"\r\n"))
        verb_bytes, _, arg_bytes = line.partition(b" ")
        verb = verb_bytes.decode("ascii", "replace").upper()
        if verb == "PASS":
            self._trace_line("C", "PASS <redacted>")
        else:
            self._trace_line("C", line.decode("utf-8", "replace"))
        if not verb:
            self._error(500, "Empty command")
            return None
        if verb not in _KNOWN:
            self._error(500, f"Unknown command {verb[:20]!r}")
            return None
        try:
            # RFC 2640 2.2: path names are UTF-8.
            arg = arg_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._error(501, "Argument is not valid UTF-8")
            return None
        if any(ord(c) < 0x20 or c == "\x7f" for c in arg):
            self._error(501, "Control characters are not allowed in an argument")
            return None
        return verb, arg

    # --- commands -----------------------------------------------------------------------------

    def _dispatch(self, verb: str, arg: str) -> Event | None:
        verb = _ALIASES.get(verb, verb)
        rest_was_fresh = self._rest_fresh
        self._rest_fresh = False
        if self.transferring:
            return self._during_transfer(verb, arg)
        if self._state != "ready" and verb not in _BEFORE_LOGIN:
            self._error(530, "Please log in with USER and PASS first")
            return None
        if verb != "RNTO" and self._rnfr is not None and verb != "RNFR":
            self._rnfr = None  # RFC 959 4.1.3: RNTO must follow RNFR at once
        handler = getattr(self, f"_cmd_{verb.lower()}", None)
        if verb in _TRANSFERS:
            offset = self._rest if rest_was_fresh else 0
            return self._transfer(verb, arg, offset)
        if verb in _FILE_COMMANDS:
            return self._file(verb, arg)
        if handler is None:
            self._reply(502, f"{verb} not implemented")
            return None
        result: Event | None = handler(arg)
        return result

    def _during_transfer(self, verb: str, arg: str) -> Event | None:
        if verb == "ABOR":
            self._abort_pending = True
            return Abort()
        if verb == "STAT":
            self._reply(213, "Transfer in progress")
        elif verb == "NOOP":
            self._reply(200, "NOOP ok")
        elif verb == "QUIT":
            # RFC 959 4.1.1: the transfer's reply comes first, then the connection closes.
            self._quit_pending = True
        return None

    # login and security

    def _cmd_user(self, arg: str) -> Event | None:
        if self._state == "ready":
            self._reply(530, "Already logged in; reconnect to change user")
            return None
        if not arg:
            self._error(501, "USER needs a user name")
            return None
        if not self.tls_active and not self.settings.allow_plaintext_login:
            # RFC 4217 4 / RFC 8314's spirit: no password before TLS.
            self._reply(530, "Log in over TLS: send AUTH TLS first")
            return None
        self._user = arg
        self._state = "password"
        # RFC 2577 5: the same answer whether or not the user exists.
        self._reply(331, f"Password required for {arg}")
        return None

    def _cmd_pass(self, arg: str) -> Event | None:
        if self._state == "ready":
            self._reply(503, "Already logged in")
            return None
        if self._state != "password":
            self._error(503, "Send USER first")
            return None
        return Login(self._user, arg)

    def _cmd_acct(self, arg: str) -> Event | None:
        self._reply(202, "ACCT not needed here")
        return None

    def _cmd_auth(self, arg: str) -> Event | None:
        mechanism = arg.strip().upper()
        if self.tls_active:
            self._reply(503, "TLS is already active")
            return None
        if mechanism not in ("TLS", "TLS-C", "SSL") or not self.settings.tls_available:
            self._reply(504, f"AUTH {mechanism or '(none)'} not supported; use AUTH TLS")
            return None
        if self._state == "password":
            self._state = "user"  # RFC 4217 4: a new login starts after AUTH
        self._reply(234, "Proceed with negotiation")
        return StartTLS()

    def _cmd_pbsz(self, arg: str) -> Event | None:
        if not self.tls_active:
            self._reply(503, "PBSZ needs a TLS connection (AUTH TLS) first")
            return None
        if not arg.strip().isdigit():
            self._error(501, "PBSZ needs a number")
            return None
        self._pbsz = True
        # RFC 4217 8: a streaming TLS connection has no buffer size limit.
        self._reply(200, "PBSZ=0")
        return None

    def _cmd_prot(self, arg: str) -> Event | None:
        level = arg.strip().upper()
        if not self.tls_active:
            self._reply(503, "PROT needs a TLS connection (AUTH TLS) first")
        elif not self._pbsz:
            self._reply(503, "Send PBSZ first (RFC 4217 9)")
        elif level == "P":
            self.protected = True
            self._reply(200, "Data connections will be protected (TLS)")
        elif level == "C":
            if self.settings.require_protected_data:
                self._reply(534, "Data connections must be protected here: use PROT P")
            else:
                self.protected = False
                self._reply(200, "Data connections will be in clear")
        elif level in ("S", "E"):
            self._reply(536, f"PROT {level} not supported; use PROT P")
        else:
            self._error(504, "PROT takes C or P")
        return None

    def _cmd_ccc(self, arg: str) -> Event | None:
        # RFC 4217 12.2: clearing the control channel is refused by policy.
        self._reply(533, "CCC refused: the control connection stays protected")
        return None

    def _cmd_rein(self, arg: str) -> Event | None:
        self._reply(502, "REIN not implemented; reconnect instead")
        return None

    def _cmd_smnt(self, arg: str) -> Event | None:
        self._reply(502, "SMNT not implemented")
        return None

    def _cmd_site(self, arg: str) -> Event | None:
        command, _, rest = arg.partition(" ")
        command = command.upper()
        if command == "CHMOD":
            # The unofficial SITE CHMOD mode path (pyftpdlib, vsftpd), as mirror tools send.
            mode, _, path = rest.strip().partition(" ")
            if not mode or len(mode) > 4 or any(c not in "01234567" for c in mode) or not path:
                self._error(501, "SITE CHMOD takes an octal mode and a path")
                return None
            return FileRequest("CHMOD", path, mode)
        if command == "HELP":
            self._reply(214, ["SITE commands:", " CHMOD mode path", "End"])
            return None
        self._reply(504, f"SITE {command or '(none)'} not understood; SITE HELP lists them")
        return None

    # information

    def _cmd_syst(self, arg: str) -> Event | None:
        self._reply(215, "UNIX Type: L8")
        return None

    def _cmd_feat(self, arg: str) -> Event | None:
        features = ["EPRT", "EPSV", "MDTM", "MLST type*;size*;modify*;perm*;unique*;",
                    "PASV", "REST STREAM", "SIZE", "TVFS", "UTF8"]
        if self.settings.tls_available or self.tls_active:
            features += ["AUTH TLS", "PBSZ", "PROT"]
        # RFC 2389 3.2: feature lines start with a space.
        self._reply(211, ["Features:", *(f" {f}" for f in sorted(features)), "End"])
        return None

    def _cmd_opts(self, arg: str) -> Event | None:
        name, _, value = arg.partition(" ")
        name = name.upper()
        if name == "UTF8":
            # RFC 2640 3.1 (draft form widely sent): names are UTF-8 anyway.
            self._utf8 = value.strip().upper() != "OFF"
            self._reply(200, "UTF8 mode " + ("on" if self._utf8 else "off"))
        elif name == "MLST":
            # RFC 3659 7.9: we always send every fact we know.
            self._reply(200, "MLST OPTS type;size;modify;perm;unique;")
        else:
            self._reply(501, f"OPTS {name or '(none)'} not understood")
        return None

    def _cmd_help(self, arg: str) -> Event | None:
        verbs = sorted(_KNOWN)
        lines = ["The following commands are recognized:"]
        lines += [" " + " ".join(verbs[i:i + 12]) for i in range(0, len(verbs), 12)]
        self._reply(214, [*lines, "Help OK"])
        return None

    def _cmd_noop(self, arg: str) -> Event | None:
        self._reply(200, "NOOP ok")
        return None

    def _cmd_quit(self, arg: str) -> Event | None:
        self._quit()
        return None

    def _cmd_pwd(self, arg: str) -> Event | None:
        # RFC 959 7: a quote inside the name is doubled.
        self._reply(257, f"\"{self.cwd.replace(chr(34), chr(34) * 2)}\" is the current directory")
        return None

    def _cmd_stat(self, arg: str) -> Event | None:
        if arg:
            return self._file("STAT", arg)
        lines = [f"{self.settings.server_name} FTP server status:",
                 f" Connected to {self.settings.client_address}",
                 f" Logged in as {self.account}" if self.account else " Not logged in",
                 f" TYPE: {'ASCII' if self.ascii else 'BINARY'}, STRUcture: File, MODE: Stream",
                 " Control connection " + ("protected (TLS)" if self.tls_active else "in clear"),
                 " Data connections " + ("protected (TLS)" if self.protected else "in clear"),
                 "End of status"]
        self._reply(211, lines)
        return None

    # parameters

    def _cmd_type(self, arg: str) -> Event | None:
        parts = arg.upper().split()
        if parts in (["A"], ["A", "N"]):
            self.ascii = True
            self._reply(200, "Type set to A")
        elif parts in (["I"], ["L", "8"]):
            self.ascii = False
            self._reply(200, "Type set to I")
        elif parts and parts[0] in ("A", "E", "I", "L"):
            self._reply(504, f"TYPE {arg} not supported; use A or I")
        else:
            self._error(501, "TYPE takes A or I")
        return None

    def _cmd_mode(self, arg: str) -> Event | None:
        if arg.upper() == "S":
            self._reply(200, "Mode set to S")
        elif arg.upper() in ("B", "C", "Z"):
            self._reply(504, f"MODE {arg} not supported; use S")
        else:
            self._error(501, "MODE takes S")
        return None

    def _cmd_stru(self, arg: str) -> Event | None:
        if arg.upper() == "F":
            self._reply(200, "Structure set to F")
        elif arg.upper() in ("R", "P"):
            self._reply(504, f"STRU {arg} not supported; use F")
        else:
            self._error(501, "STRU takes F")
        return None

    def _cmd_allo(self, arg: str) -> Event | None:
        self._reply(202, "ALLO not needed here")
        return None

    def _cmd_rest(self, arg: str) -> Event | None:
        if not arg.isdigit() or len(arg) > 18:
            self._error(501, "REST needs a byte offset")
            return None
        self._rest = int(arg)
        self._rest_fresh = True
        self._reply(350, f"Restarting at {self._rest}; send STOR or RETR")
        return None

    def _cmd_abor(self, arg: str) -> Event | None:
        self._passive = False
        self._reply(225, "No transfer to abort")
        return None

    # data connections

    def _cmd_pasv(self, arg: str) -> Event | None:
        if self._epsv_all:
            self._reply(503, "EPSV ALL was sent: use EPSV")
            return None
        if ":" in self.settings.client_address and "." not in self.settings.client_address:
            self._reply(522, "PASV is IPv4 only; use EPSV (RFC 2428)")
            return None
        return PassiveRequest(extended=False)

    def _cmd_epsv(self, arg: str) -> Event | None:
        arg = arg.strip().upper()
        if arg == "ALL":
            self._epsv_all = True
            self._reply(200, "EPSV ALL ok: only EPSV from now on")
            return None
        if arg and arg not in ("1", "2"):
            self._reply(522, "Network protocol not supported, use (1,2)")
            return None
        return PassiveRequest(extended=True)

    def _cmd_port(self, arg: str) -> Event | None:
        if self._epsv_all:
            self._reply(503, "EPSV ALL was sent: use EPSV")
            return None
        parts = arg.split(",")
        if len(parts) != 6 or not all(p.strip().isdigit() and int(p) < 256 for p in parts):
            self._error(501, "PORT takes h1,h2,h3,h4,p1,p2")
            return None
        host = ".".join(str(int(p)) for p in parts[:4])
        port = int(parts[4]) * 256 + int(parts[5])
        self._set_active(host, port, "PORT")
        return None

    def _cmd_eprt(self, arg: str) -> Event | None:
        if self._epsv_all:
            self._reply(503, "EPSV ALL was sent: use EPSV")
            return None
        # RFC 2428 2: <d><net-prt><d><net-addr><d><tcp-port><d>
        if len(arg) < 7 or arg[0] != arg[-1] or arg.count(arg[0]) != 4:
            self._error(501, "EPRT takes |proto|address|port|")
            return None
        _, proto, host, port_text, _ = arg.split(arg[0])
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            self._error(501, "EPRT: not an IP address")
            return None
        if (proto, address.version) not in (("1", 4), ("2", 6)):
            self._reply(522, "Network protocol not supported, use (1,2)")
            return None
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            self._error(501, "EPRT: bad port")
            return None
        self._set_active(str(address), int(port_text), "EPRT")
        return None

    def _set_active(self, host: str, port: int, verb: str) -> None:
        if not same_host(host, self.settings.client_address):
            # RFC 2577 3: no data connections to a third host (FTP bounce).
            self._reply(504, f"{verb} refused: data connections go only to your own address")
            return
        if port < 1024:
            # RFC 2577 3: nor to a privileged port.
            self._reply(504, f"{verb} refused: port {port} is a privileged port")
            return
        self._active = ActiveTarget(host, port)
        self._passive = False
        self._reply(200, f"{verb} command successful")

    def _transfer(self, verb: str, arg: str, offset: int) -> Event | None:
        if verb in ("RETR", "STOR", "APPE") and not arg:
            self._error(501, f"{verb} needs a file name")
            return None
        if self.tls_active and not self.protected and self.settings.require_protected_data:
            self._reply(521, "Data connections must be protected here: send PBSZ 0 and PROT P")
            return None
        if self.ascii and offset:
            self._reply(504, "REST is for TYPE I (binary) transfers")
            return None
        if not self._passive and self._active is None:
            self._reply(425, "Use PORT, EPRT, PASV or EPSV first")
            return None
        if verb == "APPE" and offset:
            offset = 0  # RFC 959: APPE appends whatever REST said
        if verb in ("LIST", "NLST"):
            # ls options many clients send ("LIST -la", "NLST -a"): ignored, as vsftpd does.
            while arg.startswith("-"):
                arg = arg.partition(" ")[2].lstrip(" ")
        return TransferRequest(verb, arg, offset, self.ascii,  # type: ignore[arg-type]
                               self.protected, self._active)

    def _file(self, verb: str, arg: str) -> Event | None:
        if verb == "CDUP":
            return FileRequest("CWD", "..")
        if verb == "RNTO":
            if self._rnfr is None:
                self._error(503, "RNTO must come right after RNFR")
                return None
            source, self._rnfr = self._rnfr, None
            if not arg:
                self._error(501, "RNTO needs a name")
                return None
            return FileRequest("RNTO", arg, source)
        if not arg and verb not in ("CWD", "MLST", "STAT"):
            self._error(501, f"{verb} needs a path")
            return None
        if verb == "SIZE" and self.ascii:
            # RFC 3659 4: the size depends on TYPE; in ASCII it would mean reading the file.
            self._reply(550, "SIZE not allowed in TYPE A; send TYPE I")
            return None
        return FileRequest(verb, arg)  # type: ignore[arg-type]

    # --- replies ------------------------------------------------------------------------------

    def _reply(self, code: int, text: str | Sequence[str]) -> None:
        lines = [text] if isinstance(text, str) else list(text)
        if not lines:
            lines = [""]
        out = []
        for i, line in enumerate(lines):
            line = line.replace("\r", " ").replace("\n", " ")
            last = i == len(lines) - 1
            if last:
                out.append(f"{code} {line}")
            elif i == 0:
                out.append(f"{code}-{line}")
            else:
                # RFC 959 4.2: "If an intermediary line begins with a 3-digit number, the
                # Server must pad the front to avoid confusion" (ftplib ends a reply at any
                # line starting with its code but for "ddd-", "213" or "213abc" included).
                out.append(f" {line}" if len(line) >= 3 and line[:3].isdigit() else line)
        for line in out:
            self._trace_line("S", line)
        self._out.append(("\r\n".join(out) + "\r\n").encode("utf-8", "replace"))

    def _error(self, code: int, text: str) -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors:
            self._reply(421, "Too many errors, closing connection")
            self._close()
            return
        self._reply(code, text)

    def _done(self) -> None:
        self._waiting = None

    def _quit(self) -> None:
        self._reply(221, "Goodbye")
        self._close()

    def _close(self) -> None:
        self.closed = True
        self._state = "closed"

    def _trace_line(self, direction: str, line: str) -> None:
        if self._trace is not None:
            self._trace(direction, line)


def _strip_telnet(line: bytes) -> bytes:
    """Drop Telnet IAC sequences (RFC 854; clients send IAC IP IAC DM before ABOR, RFC 959
    4.1.3).  0xFF never occurs in UTF-8, so names are not touched."""
    if b"\xff" not in line:
        return line
    out = bytearray()
    i = 0
    while i < len(line):
        if line[i] == 0xFF:
            i += 2
            continue
        out.append(line[i])
        i += 1
    return bytes(out).lstrip()
