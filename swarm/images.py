"""The images instances run, as this node has them: present or not, their ids, their users."""

from __future__ import annotations

import io
import tarfile

import docker.errors

from swarmpool.swarm.engine import Engine
from swarmpool.swarm.model import LABEL_OWNER, SwarmError


class Images:
    """What this node's engine says of images (nothing can be pulled here), with what a create learnt."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.ids: dict[str, str] = {}  # catalogue image -> its id at the last create
        self._accounts: dict[str, tuple[str, str, str]] = {}  # image id -> its user and user database

    def present(self, image: str) -> bool:
        """True when `image` is present on this node."""
        try:
            self._engine.client().api.inspect_image(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def resolve(self, image: str) -> str:
        """The id `image` stands for now on this node ("" if absent): a tag moved means new instances."""
        try:
            return str(self._engine.client().api.inspect_image(image)["Id"])
        except docker.errors.ImageNotFound:
            return ""

    def accounts(self, image: str) -> tuple[str, str, str] | None:
        """The image's own user (Config.User), /etc/passwd and /etc/group as text ("" when absent); None when
        the image is not on this node. Read from a container that is created, never started, and removed."""
        api = self._engine.client().api
        try:
            found = api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return None
        if (known := self._accounts.get(found["Id"])) is not None:
            return known
        try:
            container = api.create_container(found["Id"], entrypoint=["/nonexistent"], command=[],
                                             labels={LABEL_OWNER: self._engine.namespace}, network_disabled=True)["Id"]
            try:
                passwd, group = self._read_file(container, "/etc/passwd"), self._read_file(container, "/etc/group")
            finally:
                api.remove_container(container, force=True)
        except docker.errors.APIError as e:
            raise SwarmError(f"cannot read the users of image {image}: {e.explanation or e}") from e
        accounts = (str((found.get("Config") or {}).get("User") or ""), passwd, group)
        self._accounts[found["Id"]] = accounts
        return accounts

    def _read_file(self, container: str, path: str) -> str:
        """A small text file of a (stopped) container; "" when it has none."""
        try:
            stream, _ = self._engine.client().api.get_archive(container, path)
        except docker.errors.NotFound:
            return ""
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            data = tar.extractfile(member) if member is not None and member.isfile() else None
            return data.read(1024 * 1024).decode(errors="replace") if data is not None else ""
