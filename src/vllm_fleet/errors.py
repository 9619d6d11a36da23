"""The one exception tree of vllm-fleet.

    FleetError                     root: what failed, where, and the fix
    ├── SpecError                  bad spec or bad command-line input (exit 2)
    ├── SourceError                a model source could not be listed or read
    │   ├── SourceNotFound         (also FileNotFoundError)
    │   └── SourceForbidden        (also PermissionError)
    ├── CacheError                 the local cache is unusable (disk full, lock, layout)
    ├── EngineError                vLLM could not be started or did not become healthy
    ├── RegistryError              the model registry could not be opened, migrated or written
    ├── TargetError                a target refused (already running, nothing to stop)
    │   └── NotBuilt               a target cannot do this yet (says what to do instead)
    └── CheckFailed                a checked thing failed: verify, SLO (exit 1)

Library errors are converted at the boundary with ``raise ... from exc`` so a
caller needs one ``except FleetError``.
"""

from __future__ import annotations


class FleetError(Exception):
    """Root error. ``str(err)`` is one actionable line; ``fix`` says the next step."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class SpecError(FleetError):
    """The spec or the command line is wrong; nothing was done."""

    exit_code = 2


class SourceError(FleetError):
    """A model source could not be listed or read."""


class SourceNotFound(SourceError, FileNotFoundError):
    """The model (or a file of it) does not exist at the source."""


class SourceForbidden(SourceError, PermissionError):
    """The source refused the credentials that were used."""


class CacheError(FleetError):
    """The cache directory cannot be used as asked."""


class EngineError(FleetError):
    """vLLM did not start or did not become healthy."""


class RegistryError(FleetError):
    """The model registry (SQLite or PostgreSQL) could not be opened, migrated, read or written."""


class TargetError(FleetError):
    """A target refused the operation (already running, nothing to stop)."""


class NotBuilt(TargetError):
    """The target cannot do this yet; ``fix`` says what works today instead."""


class CheckFailed(FleetError):
    """A verification or SLO check failed."""
