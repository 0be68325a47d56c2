"""Exact, cheap cache keys for the pipeline's stages.

A stage key hashes what the stage's output really depends on: the content fingerprints of its
upstream outputs (from manifests, never re-reading arrays), its own parameters and derived inputs
(the source archive's content, the champion a model is judged against), the source of the library
code it runs (whole subpackages of `cifarflow`, so no module can be forgotten), and the versions of
the libraries that change its result. The runner computes each key once and hands it to the task;
Prefect's cache policy (`StageKey`) reads it from there, and `--plan` uses the same function. Each
stage's last key is recorded on disk so a plan can say *why* a stage will run ("epochs 15→20").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from cifarflow.files import file_digest, read_json, text_digest, write_json


@dataclass(frozen=True)
class StageSpec:
    """One stage: the only declaration of what it reads. Its task takes exactly `config`, `key`, one
    parameter per `upstream` stage (that stage's output) and one per `given` value; the runner feeds
    it those and nothing else, and every one of them enters the key."""

    name: str
    params: tuple[str, ...]  # attributes of PipelineConfig (resolved values) the output depends on
    code: tuple[str, ...]  # cifarflow packages or modules whose source the output depends on
    libraries: tuple[str, ...]  # distributions whose version the output depends on
    upstream: tuple[str, ...] = ()  # names of the stages whose outputs feed this one
    inputs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None  # derived key inputs (key only)
    # values read outside the pipeline that the task receives, each resolved once per run by
    # (config, upstream outputs) → an object with a `fingerprint` (str), which enters the key's params
    given: tuple[tuple[str, Callable[[Any, dict[str, Any]], Any]], ...] = ()
    find: Callable[[Any, str, dict], Any] | None = None  # (config, key, task inputs) → output on disk if whole
    scratch: Callable[[Any, str], Path] | None = None  # partial work a forced run discards first

    @property
    def task_parameters(self) -> tuple[str, ...]:
        """The parameters its task must take, in order."""
        return ("config", "key", *self.upstream, *(name for name, _ in self.given))

    def resolve_inputs(self, config: Any, outputs: dict[str, Any]) -> dict[str, Any]:
        """What its task receives beside `config` and `key`: its upstream stages' outputs, taken from
        `outputs` (every stage's output so far, by name), and its `given` values, resolved now."""
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
    """The key of `spec`'s output for `config` and its task inputs (`upstream`: its upstream stages'
    outputs and its `given` values, as `StageSpec.resolve_inputs` returns them)."""
    params = {name: _plain(getattr(config, name)) for name in spec.params}
    if spec.inputs is not None:
        params |= spec.inputs(config, upstream)
    params |= {name: upstream[name].fingerprint for name, _ in spec.given}
    return KeyParts(
        params=params,
        upstream={name: upstream[name].fingerprint for name in spec.upstream},
        code={name: code_digest(name) for name in spec.code},
        libraries={lib: library_version(lib) for lib in spec.libraries},
    )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def source_identity(config: Any, upstream: dict[str, Any] | None = None) -> dict[str, str]:
    """A local archive is known by its content; a URL by itself and its expected checksum."""
    from cifarflow.data.archive import is_url, local_path

    if is_url(config.source) and not config.source.startswith("file:"):
        return {"source_identity": f"{config.source}#{config.sha256 or config.md5 or 'unverified'}"}
    path = local_path(config.source).resolve()
    memo = config.layout.stage_state / "sources.json"
    return {"source_identity": f"sha256:{remembered_digest(path, memo, config.layout.root)}"}


def remembered_digest(path: Path, memo: Path, root: Path | None = None) -> str:
    """sha256 of an input file, hashed again only when its identity changes (inode, size, mtime in
    ns: what `make` and git's index trust), so a cached re-run does not re-read a 170 MB archive.
    A file under `root` (the data dir) is remembered by its path relative to it, so the memo stays
    right when the data dir moves. Outputs are never trusted this way: they are verified by content
    every time."""
    stat = path.stat()
    identity = [stat.st_ino, stat.st_size, stat.st_mtime_ns]
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    try:
        known = read_json(memo) if memo.is_file() else {}
        entry = known.get(name) if isinstance(known, dict) else None
        if entry and entry["identity"] == identity:
            return entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # a memo cut short or edited: hash again
        known = {}
    digest = file_digest(path)
    try:
        write_json(memo, (known if isinstance(known, dict) else {}) | {name: {"identity": identity, "sha256": digest}})
    except OSError:
        pass  # a read-only data dir: just hash again next time
    return digest


@dataclass
class StageKey(CachePolicy):
    """Prefect cache policy: the stage key the runner computed and passed to the task as `key`."""

    stage: str = ""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        return f"{self.stage}-{inputs['key']}"


# --- what ran last, per stage: lets --plan explain itself and --stages find upstream outputs ---


def state_path(state_dir: Path, stage: str) -> Path:
    return state_dir / f"{stage}.json"


def record_stage(state_dir: Path, stage: str, parts: KeyParts, result_ref: dict[str, Any]) -> None:
    write_json(
        state_path(state_dir, stage),
        {
            "key": parts.key,
            "params": parts.params,
            "upstream": parts.upstream,
            "code": parts.code,
            "libraries": parts.libraries,
            "result": result_ref,
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def last_state(state_dir: Path, stage: str) -> dict[str, Any] | None:
    """What `record_stage` wrote last for `stage`; None when nothing was, or the file is unreadable
    (it only explains plans, so a damaged one is as good as none)."""
    path = state_path(state_dir, stage)
    try:
        state = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    parts = ("params", "upstream", "code", "libraries")
    whole = isinstance(state, dict) and isinstance(state.get("key"), str)
    return state if whole and all(isinstance(state.get(part), dict) for part in parts) else None


def explain_change(previous: dict[str, Any] | None, parts: KeyParts) -> str:
    """Human words for why a key differs from the one recorded last time."""
    if previous is None:
        return "never ran in this data directory"
    reasons = []
    for name, value in parts.params.items():
        old = previous["params"].get(name)
        if old != value:
            reasons.append(f"{name} {_short(old)}→{_short(value)}")
    reasons += [f"{name} output changed" for name, fp in parts.upstream.items() if previous["upstream"].get(name) != fp]
    reasons += [f"code of {m} changed" for m, d in parts.code.items() if previous["code"].get(m) != d]
    reasons += [
        f"{lib} {previous['libraries'].get(lib)}→{v}"
        for lib, v in parts.libraries.items()
        if previous["libraries"].get(lib) != v
    ]
    return ", ".join(reasons) or "inputs changed"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "…"
