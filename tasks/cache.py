"""Exact, cheap cache keys for the pipeline's stages.

Prefect's default policy hashes a task's own source and its inputs as given. Ours hashes what a
stage's output really depends on: the content fingerprints of its upstream outputs (from
manifests, never re-reading arrays), its own parameters, the source of every project module it
uses, and the versions of the libraries that change its result. The same function computes the
key for Prefect (`StageCachePolicy`) and for `--plan`, and each stage's last key is recorded on
disk so a plan can say *why* a stage will run ("epochs 15→20").
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.files import file_digest, read_json, text_digest, write_json


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: tuple[str, ...]  # attributes of PipelineConfig (resolved values) the output depends on
    modules: tuple[str, ...]  # project modules whose source the output depends on
    libraries: tuple[str, ...]  # distributions whose version the output depends on
    upstream: tuple[str, ...] = ()  # names of the stages whose outputs feed this one


@cache
def module_digest(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return "absent"
    return file_digest(spec.origin)


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
    return KeyParts(
        params={name: _param(config, name) for name in spec.params},
        upstream={name: upstream[name].fingerprint for name in spec.upstream},
        code={m: module_digest(m) for m in spec.modules},
        libraries={lib: library_version(lib) for lib in spec.libraries},
    )


def _param(config: Any, name: str) -> Any:
    if name == "source_identity":
        return source_identity(config)
    value = getattr(config, name)
    return str(value) if isinstance(value, Path) else value


def source_identity(config: Any) -> str:
    """A local archive is known by its content; a URL by itself and its expected checksum."""
    from tasks.archive import is_url, local_path

    if is_url(config.source) and not config.source.startswith("file:"):
        return f"{config.source}#{config.sha256 or config.md5 or 'unverified'}"
    path = local_path(config.source)
    return f"sha256:{_cached_file_digest(str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)}"


@cache
def _cached_file_digest(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path)  # mtime and size in the cache key: an edited file is hashed again


@dataclass
class StageCachePolicy(CachePolicy):
    """Prefect cache policy computing the stage key from the task's `config` and upstream inputs."""

    spec: StageSpec | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        upstream = {name: inputs[name] for name in self.spec.upstream}
        return f"{self.spec.name}-{key_parts(self.spec, inputs['config'], upstream).key}"


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
    path = state_path(state_dir, stage)
    return read_json(path) if path.is_file() else None


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
