"""NTP (RFC 5905) and NTS (RFC 8915): the clock."""
