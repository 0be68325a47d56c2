"""Older or restored registries brought to the current form. The pipeline calls `upgrade_registry`
at the start of every run, under the data directory's lock:

- `adopt_legacy_champion`: registries written before versions existed kept the champion as a plain
  `champion/` directory (and earlier champions in `history/`); that champion becomes the next version
  and the alias points at it, so an upgrade keeps the champion a challenger must beat;
- `store.recover`: what a killed run left finished or undone (a version half built removed, a move
  missing from aliases.jsonl recorded), the alias recorded in champion.json (registries from before
  it kept only the `champion` link), and the link put back where a backup turned it into a folder or
  dropped it;
- whatever is damaged is logged, naming the file and what to do; the run goes on, and the promote
  stage stops with the same message if it needs the damaged champion.

Adopting a legacy champion takes four steps; each can be killed and the next call finishes the job:

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


def upgrade_registry(registry: Path, log: Callable[[str], None] = print) -> None:
    """Adopt a legacy champion, repair the alias, and log what is damaged (see the module docstring)."""
    adopt_legacy_champion(registry, log)
    try:
        store.recover(registry, log)
    except store.RegistryDamaged:
        pass  # logged with the rest just below
    for damage in store.problems(registry):
        log(f"registry damaged: {damage}")


def adopt_legacy_champion(registry: Path, log: Callable[[str], None] = print) -> store.Version | None:
    """The adopted version, or None when there is nothing to adopt (or it cannot be: then the old
    directory is left untouched and the reason logged; the registry behaves as if it had no champion)."""
    registry = Path(registry)
    alias = store.alias_path(registry)
    if alias.is_dir() and not alias.is_symlink() and not (alias / "version.json").exists():
        source = alias  # (a folder copy of a version, which a backup leaves, is store.repair_alias's to mend)
    elif legacy_dir(registry).is_dir() and not store.pointer_path(registry).exists() and _no_link(alias):
        source = legacy_dir(registry)  # a call killed between steps 2 and 3
    else:
        return None
    try:
        record = read_json(source / "champion.json")  # version.json's JSON names (records.VERSION_FIELDS)
        version = store.version_of_model(registry, record["id"]) or register_legacy(registry, source, record)
    except Exception as error:  # an incomplete or unreadable old champion must not stop the pipeline
        log(f"the old registry's {source.name}/ could not be adopted ({type(error).__name__}: {error}); left as is")
        return None
    if source == alias:
        os.replace(alias, legacy_dir(registry))
    store.move_alias(registry, version.name, by="upgrade", reason=NOTE)
    shutil.rmtree(legacy_dir(registry), ignore_errors=True)
    log(f"registry upgraded: the champion is now version {version.name}")
    return version


def _no_link(alias: Path) -> bool:
    return not alias.exists() and not alias.is_symlink()


def register_legacy(registry: Path, source: Path, record: dict) -> store.Version:
    from cifarflow.registry.export import export_model

    name = store.next_name(registry)
    staging = store.new_staging(registry, name)
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
        store.discard_staging(staging)
        raise
    return store.commit_version(registry, staging, name)
