"""Registries written before versions existed kept the champion as a plain `champion/` directory
(and earlier champions in `history/`). `adopt_legacy_champion` makes that champion the next version
and points the alias at it, so an upgrade keeps the champion a challenger must beat. The pipeline
calls it at the start of every run, under the data directory's lock.

Each step can be killed and the next call finishes the job:

1. the legacy champion is registered as a version (or found, if an earlier call got that far);
2. `champion/` is renamed to `legacy-champion/`, freeing the alias's name;
3. the alias is pointed at the version;
4. `legacy-champion/` is deleted.

`history/` is left as it is: those models were replaced, and nothing reads them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cifarflow.files import read_json, write_json
from cifarflow.registry import store

NOTE = "adopted from the champion/ directory of an older registry; registered without a smoke test"


def legacy_dir(registry: Path) -> Path:
    return Path(registry) / "legacy-champion"


def adopt_legacy_champion(registry: Path, log: Callable[[str], None] = print) -> store.Version | None:
    """The adopted version, or None when there is nothing to adopt (or it cannot be: then the old
    directory is left untouched and the reason logged; the registry behaves as if it had no champion)."""
    registry = Path(registry)
    alias = store.alias_path(registry)
    if alias.is_dir() and not alias.is_symlink():
        source = alias
    elif legacy_dir(registry).is_dir() and store.champion_name(registry) is None:
        source = legacy_dir(registry)  # a call killed between steps 2 and 3
    else:
        return None
    try:
        record = read_json(source / "champion.json")
        version = store.find_model(registry, record["id"]) or register_legacy(registry, source, record)
    except Exception as error:  # an incomplete or unreadable old champion must not stop the pipeline
        log(f"the old registry's {source.name}/ could not be adopted ({type(error).__name__}: {error}); left as is")
        return None
    if source == alias:
        os.replace(alias, legacy_dir(registry))
    store.move_alias(registry, version.name, by="upgrade", reason=NOTE)
    shutil.rmtree(legacy_dir(registry), ignore_errors=True)
    log(f"registry upgraded: the champion is now version {version.name}")
    return version


def register_legacy(registry: Path, source: Path, record: dict) -> store.Version:
    from cifarflow.registry.export import export_model

    name = store.next_name(registry)
    staging = store.new_staging(registry)
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        (staging / "champion.json").unlink()
        label_names = read_json(source / "metrics.json").get("class_names") or []
        export_model(staging / "model.keras", record["model"], label_names, staging / "export")
        write_json(
            staging / "version.json",
            record | {"version": name, "label_names": label_names, "smoke": None, "note": NOTE},
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return store.commit_version(registry, staging, name)
