"""Docker swarm task states as swarmpool reads them: the one list of states a task never leaves."""

from __future__ import annotations

ENDED_TASK_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
"""A task in one of these has stopped for good: its container is gone or will never run again."""

EXIT_CODE_STATES = frozenset({"complete", "failed", "shutdown", "rejected"})
"""The ended states in which a task's status carries its container's exit code (`TaskStatus.exit_code`)."""

MISSING = "missing"
"""What `SwarmPort.status` says once the service itself is gone."""
