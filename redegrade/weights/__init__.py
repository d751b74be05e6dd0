"""Named checkpoints: where they come from, where they are cached, and how they are verified.

The registry (:mod:`redegrade.weights.registry`) is data: one :class:`Checkpoint` record per file.
:func:`resolve` turns a registry name or a local path into a verified local file, downloading into
``$REDEGRADE_HOME/weights`` (atomic, verified) unless offline.
"""
from redegrade.weights.registry import REGISTRY, Checkpoint, get
from redegrade.weights.store import (cache_path, check_checkpoint, download, record_first_use, resolve,
                                     sha256_file, verify)

__all__ = ["REGISTRY", "Checkpoint", "get", "cache_path", "check_checkpoint", "download", "record_first_use",
           "resolve", "sha256_file",
           "verify"]
