"""The relay: the outbound queue's runner, delivering queued mail to other domains by MX."""
