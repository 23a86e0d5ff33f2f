"""Integration tests run against a real nats-server and the real Docker swarm."""

from tests.fixtures_real import (  # noqa: F401
    docker_client,
    echo_image,
    nats_server,
    nc,
    nothing_left_behind,
    store,
    swarm,
    swarm_namespace,
)
