"""Files: each account's own file tree (served by FTP)."""
