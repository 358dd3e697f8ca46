"""SFTP (SSH File Transfer Protocol version 3) over SSH, served by asyncssh on each account's
file tree (the same tree, confinement and quota as FTP).

asyncssh is imported here once with its import-time warnings silenced (its DSA support makes
cryptography warn), so neither `netpost serve` nor the command line prints them.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import asyncssh  # noqa: F401
