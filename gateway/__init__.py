"""The gateway: catalogue page, launches, waiting room and the reverse proxy to claimed instances."""

from swarmpool.gateway.app import make_app

__all__ = ["make_app"]
