"""Real third-party servers for tests: an authoritative DNS server (Knot) and Postfix."""
