"""netpost's mail user agent: `netpost mail ...` (docs/agent.md).

It talks to any mail server with the standard protocols: submission (RFC 6409) to send,
IMAP4rev1/rev2 (RFC 3501, 9051) or POP3 (RFC 1939) to read, and PGP/MIME (RFC 3156) over
OpenPGP (RFC 9580, by pysequoia). The pieces that need no network are pure functions over
`email.message.EmailMessage` (compose, render, mime_pgp, maildir); the clients are thin
wrappers of the standard library's imaplib, smtplib and poplib.
"""


class AgentError(Exception):
    """One line for the user: what went wrong and, where it helps, what to do."""
