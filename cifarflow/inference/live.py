"""The service's model, switched live: a watcher thread loads a new champion beside the old and swaps it in with one
assignment (a running request finishes on its model); after a failed load or a damaged alias the old one serves on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from cifarflow.inference.predictor import Predictor, load_predictor
from cifarflow.registry import store

POLL_S = 1.0
RETRY_S = 30.0  # a version that failed to load is tried again after this long (a disk hiccup, say)
VERIFY_S = 30.0  # the served version's files are checked against their registered sha256 this often
UNTRIED = object()  # no target tried yet (None is a target: "no champion")


class LiveModel:
    def __init__(
        self,
        registry: Path,
        spec: str = store.ALIAS,
        poll_s: float = POLL_S,
        log: Callable = print,
        verify_s: float | None = None,
    ):
        self.registry, self.spec, self.poll_s, self.log = Path(registry), spec, poll_s, log
        self.follows_alias = spec == store.ALIAS
        self.predictor: Predictor | None = None  # read by request threads; replaced whole, never mutated
        self.problem: str | None = None  # why there is no model, for /health
        self.damage: str | None = None  # what is damaged on disk in the version being served, and the fix
        self.verify_s, self._verified_at = VERIFY_S if verify_s is None else verify_s, time.monotonic()
        self._target: object = UNTRIED  # the alias target last tried
        self._failed_at: float | None = None  # when loading `_target` last failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the model if the alias moved (or on the first call); True when a new model was swapped in."""
        try:
            target = store.champion_name(self.registry) if self.follows_alias else self.spec
        except store.RegistryDamaged as damage:  # aliases.jsonl cut or edited: keep serving, say why
            if self.problem != str(damage):
                self.problem = str(damage)
                self.log(f"the champion alias cannot be read ({damage}); still serving {self.version or 'nothing'}")
            return False
        retry = self._failed_at is not None and time.monotonic() - self._failed_at > RETRY_S
        if target == self._target and not retry:
            if self._failed_at is None and self.predictor is not None:
                self.problem = None  # a damaged alias was repaired, pointing where it did
                self._verify()
            return False
        self._target, self._failed_at = target, None
        if target is None:
            self.problem = f"no champion in {self.registry} yet: run the pipeline first"
            return False
        try:
            predictor = load_predictor(target, self.registry)
        except Exception as error:  # ModelNotFound, a damaged export (TensorFlow's errors), a disk error
            self._failed_at = time.monotonic()
            self.problem = f"{target} could not be loaded: {type(error).__name__}: {error}"
            self.log(f"model {target} could not be loaded ({error}); still serving {self.version or 'nothing'}")
            return False
        previous, self.predictor, self.problem, self.damage = self.version, predictor, None, None
        self._verified_at = time.monotonic()
        self.log(f"serving model {predictor.version}" + (f" (was {previous})" if previous else ""))
        return True

    def _verify(self) -> None:
        """Every `verify_s`, following the alias: check the served version's files; log damage once, and its repair."""
        predictor = self.predictor
        if not self.follows_alias or predictor is None or time.monotonic() - self._verified_at < self.verify_s:
            return
        self._verified_at = time.monotonic()
        try:
            store.read_version(self.registry, predictor.version)
            damage = None
        except store.RegistryError as error:  # damaged, or the folder is gone
            damage = str(error)
        if damage != self.damage:
            self.damage = damage
            self.log(
                f"{damage}; still serving {predictor.version} from memory, but a restart would not load it"
                if damage
                else f"the files of {predictor.version} are whole again"
            )

    @property
    def version(self) -> str | None:
        predictor = self.predictor
        return predictor.version if predictor else None

    def start(self) -> None:
        self.refresh()
        if self.follows_alias:
            self._thread = threading.Thread(target=self._watch, name="champion-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as error:  # a watcher that dies would freeze the model: log and go on
                self.log(f"champion watcher: {type(error).__name__}: {error}")
