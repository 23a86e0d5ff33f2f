"""The exit codes of the `swarmpool` command (a floor module: it imports nothing of ours)."""

from __future__ import annotations

EXIT_UNAVAILABLE = 1  # what is needed (Docker, NATS, the admin service) does not answer
EXIT_BAD_INPUT = 2  # a bad catalogue, argument or request: the message names it
