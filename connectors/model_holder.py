"""The model bundle in use by this process, and its hot reload.

One :class:`ModelHolder` per process (shared by its worker threads; onnxruntime sessions are
thread-safe). The predict step asks for :meth:`ModelHolder.current` once per batch, so a
batch is scored by exactly one version and a swap never drops or re-scores a reading.
Every ``update_interval_s`` it checks whether ``PM_MODEL`` points at a new version (registry
alias moved, or file contents changed); a new version is loaded and checked *before* the
swap, and a failed load keeps the old model (logged and counted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from connectors.model_store import (
    ModelBundle,
    ModelLoadError,
    is_registry_uri,
    load_model,
    registry_version,
)

log = logging.getLogger(__name__)

Check = Callable[[ModelBundle], None]


def _file_stamp(source: str) -> tuple:
    path = Path(source)
    files = [path] if path.is_file() else sorted(path.rglob("*.onnx")) if path.is_dir() else []
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


class ModelHolder:
    """Loads ``source`` now (raising a clear error if it cannot) and reloads it when it
    changes. ``check`` validates a bundle before it is used (e.g. feature lists)."""

    def __init__(
        self,
        source: str,
        tracking_uri: str,
        update_interval_s: float,
        check: Check | None = None,
        on_swap: Callable[[ModelBundle], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.tracking_uri = tracking_uri
        self.update_interval_s = update_interval_s
        self._check = check or (lambda bundle: None)
        self._on_swap = on_swap or (lambda bundle: None)
        self._on_reload = on_reload or (lambda result: None)
        self._clock = clock
        self._lock = threading.Lock()
        bundle = load_model(source, tracking_uri)
        self._check(bundle)
        self._bundle = bundle
        self._stamp = self._current_stamp()
        self._next_check = clock() + update_interval_s
        self._on_swap(bundle)

    @property
    def bundle(self) -> ModelBundle:
        return self._bundle

    def current(self) -> ModelBundle:
        """The bundle to use for the next batch (reloading first if one is due)."""
        if self._clock() >= self._next_check:
            self.reload_if_changed()
        return self._bundle

    def _current_stamp(self) -> object:
        if is_registry_uri(self.source):
            return registry_version(self.source, self.tracking_uri)
        return _file_stamp(self.source)

    def reload_if_changed(self) -> bool:
        """Check the source now; swap in a new version if there is one. True if swapped."""
        with self._lock:
            self._next_check = self._clock() + self.update_interval_s
            try:
                stamp = self._current_stamp()
                if stamp == self._stamp:
                    return False
                bundle = load_model(self.source, self.tracking_uri)
                self._check(bundle)
            except (ModelLoadError, ValueError, OSError) as exc:
                log.error("model reload from %s failed, keeping %s: %s",
                          self.source, self._bundle.version, exc)  # fmt: skip
                self._on_reload("failed")
                return False
            old = self._bundle.version
            self._bundle, self._stamp = bundle, stamp
            log.warning("model %s: swapped version %s -> %s", self.source, old, bundle.version)
            self._on_reload("swapped")
            self._on_swap(bundle)
            return True
