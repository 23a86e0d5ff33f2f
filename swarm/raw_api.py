"""The two engine endpoints docker-py 7 has no public method for, and so the only use of its private API.

`APIClient.create_network` cannot send `ConfigOnly` or `ConfigFrom` (a swarm-scoped bridge takes its driver
options only from a config-only network), and there is no `update_config` at all (the owner lease is changed
by version-checked updates of a swarm config). Both go through `APIClient._url`, `_post_json` and
`_result`/`_raise_for_status`, the helpers docker-py's own methods use; nothing else in swarmpool touches an
underscore attribute of a docker object. Check these two when docker-py is upgraded.
"""

from __future__ import annotations

from typing import Any

import docker.errors
from docker import APIClient


def create_network(api: APIClient, request: dict[str, Any]) -> None:
    """POST /networks/create with `request` as its body; raises docker.errors.APIError as create_network does."""
    api._result(api._post_json(api._url("/networks/create"), data=request), json=True)


def update_config(api: APIClient, config_id: str, version: int, spec: dict[str, Any]) -> bool:
    """POST /configs/<id>/update?version=<version> with `spec`; False when the config changed since `version`."""
    response = api._post_json(api._url("/configs/{0}/update", config_id), data=spec, params={"version": version})
    try:
        api._raise_for_status(response)
        return True
    except docker.errors.APIError:  # out of sequence: someone else changed it first
        return False
