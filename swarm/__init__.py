"""The only package that touches Docker: instance services on a swarm, found by label, watched by events.

Import from the modules (docs/code-map.md): `adapter.Swarm` (the facade), `port.SwarmPort`, `model` (labels,
errors, value types), `names`, `tasks`. This file imports nothing, so the docker-free ones stay docker-free.
"""
