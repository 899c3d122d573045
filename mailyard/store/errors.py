"""Errors every storage adapter raises, so callers need not know the backend."""


class StorageError(Exception):
    """A backend failed or is unreachable; the operation may be retried."""


class NotFound(StorageError):
    """The key, message or user does not exist (or is not the caller's)."""


class AlreadyExists(Exception):
    """The label or draft being created exists already."""


class VersionConflict(Exception):
    """A conditional write found another version than the one it expected."""
