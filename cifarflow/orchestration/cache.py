"""Exact, cheap stage keys (upstream fingerprints, parameters, code and library versions), and each
stage's last key on disk so `--plan` can say why it runs."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cifarflow.files import file_digest, read_json, remembered_digests, text_digest, write_json


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration: its task takes exactly `config`, `key`, the `upstream` outputs, the `given` values."""

    name: str
    params: tuple[str, ...] = ()  # attributes of PipelineConfig (resolved values) the output depends on
    code: tuple[str, ...] = ()  # cifarflow packages or modules whose source the output depends on
    libraries: tuple[str, ...] = ()  # distributions whose version the output depends on
    upstream: tuple[str, ...] = ()  # names of the stages whose outputs feed this one
    inputs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None  # derived key inputs (key only)
    # values from outside the pipeline: (config, upstream outputs) → an object whose `fingerprint` enters the key
    given: tuple[tuple[str, Callable[[Any, dict[str, Any]], Any]], ...] = ()
    find: Callable[[Any, str, dict], Any] | None = None  # (config, key, task inputs) → output on disk if whole
    scratch: Callable[[Any, str], Path] | None = None  # partial work a forced run discards first
    writes: str = ""  # where its output lives in the data dir, `<key>`: its key (checked by tests/test_flow.py)

    @property
    def task_parameters(self) -> tuple[str, ...]:
        return ("config", "key", *self.upstream, *(name for name, _ in self.given))

    def on_disk(self, config: Any, key: str, inputs: dict[str, Any]) -> Any:
        """Its output for `key` if whole on disk (`find`); files are re-hashed only when their identity changed."""
        with remembered_digests(config.layout.digest_memo, config.layout.root):
            return self.find(config, key, inputs)

    def resolve_inputs(self, config: Any, outputs: dict[str, Any]) -> dict[str, Any]:
        """Its task's inputs: upstream outputs (from `outputs`) and `given` values; KeyError if one has not run."""
        missing = [name for name in self.upstream if name not in outputs]
        if missing:
            raise KeyError(f"stage {self.name!r} runs before {', '.join(missing)}: the flow calls stages out of order")
        upstream = {name: outputs[name] for name in self.upstream}
        return upstream | {name: resolve(config, upstream) for name, resolve in self.given}


@cache
def code_digest(name: str) -> str:
    """sha256 over a module's source, or over every .py file of a package (relative names included)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return "absent"
    if spec.submodule_search_locations is None:
        return file_digest(spec.origin)
    root = Path(spec.origin).parent
    files = sorted(root.rglob("*.py"))
    return text_digest({str(f.relative_to(root)): file_digest(f) for f in files})


def library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


# how each part of a key names its change, for `explain_change`
CHANGES = {
    "params": lambda name, old, new: f"{name} {_short(old)}→{_short(new)}",
    "upstream": lambda name, old, new: f"{name} output changed",
    "code": lambda name, old, new: f"code of {name} changed",
    "libraries": lambda name, old, new: f"{name} {old}→{new}",
}


@dataclass(frozen=True)
class KeyParts:
    """Everything a stage key is made of, kept so a plan can name what changed."""

    params: dict[str, Any]
    upstream: dict[str, str]
    code: dict[str, str]
    libraries: dict[str, str]
    key: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "key", text_digest(self.params, self.upstream, self.code, self.libraries)[:32])


def key_parts(spec: StageSpec, config: Any, upstream: dict[str, Any]) -> KeyParts:
    """The key of `spec`'s output for `config` and its task inputs (`StageSpec.resolve_inputs`)."""
    params = {name: str(v) if isinstance(v := getattr(config, name), Path) else v for name in spec.params}
    if spec.inputs is not None:
        params |= spec.inputs(config, upstream)
    params |= {name: upstream[name].fingerprint for name, _ in spec.given}
    return KeyParts(
        params=params,
        upstream={name: upstream[name].fingerprint for name in spec.upstream},
        code={name: code_digest(name) for name in spec.code},
        libraries={lib: library_version(lib) for lib in spec.libraries},
    )


def source_identity(config: Any, upstream: dict[str, Any] | None = None) -> dict[str, str]:
    """A local archive or folder is known by its content (`source_digest`); a URL by itself and its checksum."""
    from cifarflow.data.archive import is_remote
    from cifarflow.data.ingest import source_digest

    if is_remote(config.source):
        return {"source_identity": f"{config.source}#{config.sha256 or config.md5 or 'unverified'}"}
    return {"source_identity": f"sha256:{source_digest(config.source, config.layout)}"}


def record_stage(state_dir: Path, stage: str, parts: KeyParts, fingerprint: str) -> None:
    """`<state_dir>/<stage>.json`: the stage's last key, its parts and its output's fingerprint (for `--plan`)."""
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(state_dir / f"{stage}.json", asdict(parts) | {"fingerprint": fingerprint, "recorded": recorded})


def last_state(state_dir: Path, stage: str) -> dict[str, Any] | None:
    """What `record_stage` wrote last for `stage`; None when nothing was or it is unreadable (plans only)."""
    try:
        state = read_json(state_dir / f"{stage}.json")
        whole = isinstance(state["key"], str) and all(isinstance(state[p], dict) for p in CHANGES)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if whole else None


def explain_change(previous: dict[str, Any] | None, parts: KeyParts) -> str:
    """Human words for why a key differs from the one recorded last time."""
    if previous is None:
        return "never ran in this data directory"
    reasons = [
        says(name, previous[part].get(name), new)
        for part, says in CHANGES.items()
        for name, new in getattr(parts, part).items()
        if previous[part].get(name) != new
    ]
    return ", ".join(reasons) or "inputs changed"


def _short(value: Any) -> str:
    return text if len(text := str(value)) <= 24 else text[:20] + "…"
