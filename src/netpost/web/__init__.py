"""The web face: files over HTTP today (`/s/...`), the HTTP API and UI later (issue 11)."""
