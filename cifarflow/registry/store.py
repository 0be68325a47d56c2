"""The model registry on disk: every promoted model is an immutable, numbered version; `champion` is
an alias that moves between versions, by a promotion or by hand, and every move is recorded.

    <data dir>/registry/
        versions/v1/             one promoted model, never changed after it is written:
            model.keras          the trained Keras model (uint8 pixels in, the fitted transform inside)
            export/              the exported inference artifact (a TensorFlow SavedModel, see export.py)
            version.json         who it is: model sha256, preset, run, accuracy, dataset version, decision,
                                 the size and sha256 of every other file (`files`), sealed by its own
                                 sha256 (read as a typed `VersionRecord`, see records.py)
            metrics.json         its evaluation metrics
            predictions.npy      its predicted label for every test image (int16), for McNemar's test
            labels.npy           the true labels of that test set (int16)
            smoke.json           the smoke test it passed before it was registered
        champion.json            the alias, the one source of truth: {"version": "v3", "model_id": …,
                                 "move": the record of the move that set it}; replaced whole (atomic rename)
        champion -> versions/vN  a relative symlink kept beside it for people and tools
                                 (`tf.saved_model.load("data/registry/champion/export")`); never read
                                 while champion.json is there
        aliases.jsonl            every move of the alias: when, from, to, by whom (promotion | hand), why
        decisions.jsonl          every champion/challenger decision, promoted or not (api.record_decision)
        .staging/                versions being built, each held by its process's lock (`<build>.lock`);
                                 never read; a build nobody holds is removed by the next command

A version directory appears whole (built in `.staging/`, sealed, then renamed), so a failed export or
smoke test leaves nothing behind, and a kill leaves a build that the next command (`recover`: the
pipeline's start, `registry.py list` and `promote`) removes, saying so. Nothing in the registry names
an absolute path: the data directory can be moved, copied or restored elsewhere.

**Moves.** A move is one atomic rename of champion.json, which carries the move's record; the record
is then appended to aliases.jsonl (a kill in between is completed by `alias_moves`). So a move that
fails writes no record, and no move goes unrecorded: promotion's rolled-back rule
(`cifarflow.promotion.rollback`) reads them.

**Backups and copies.** Tools that do not keep symbolic links (`cp -rL`, `rsync -L`, zip, object-store
syncs) turn `champion` into a copy of the version's folder, or drop it; champion.json still says
which version is the champion, and the next move or pipeline run (`repair_alias`) puts the link back.
Registries written before champion.json (only the link) are read through the link, or through the
copy's version.json when a backup made it a folder, and converted by the next pipeline run.

**Damage.** Every registry file is read in one place (`records.py`), and every file of a version is
compared with the size and sha256 recorded when it was committed (`versions.file_damage`): an empty,
cut-short, changed, missing or hand-edited file raises `RegistryDamaged`, which names the file and
what to do (restore it, move the version aside, or choose the champion again with `registry.py
promote`). `scan` returns the healthy
versions beside the damaged ones; "no champion yet" (None) and "champion damaged" (RegistryDamaged)
are told apart.

This module names the registry's parts: the versions live in `versions.py`, the alias and its moves
in `alias.py`, the parsing of every file in `records.py`, the building of a version in `build.py`.
The registry's own tools (the upgrade, the listing, `flows/registry_flow.py`, batch prediction and the
service) use these names. Promotion uses only the few verbs of `api.py`: read the champion and a
version's results, find a model's version, read the alias moves, stage the next version, commit it
and make it the champion, and the decision log.
"""

from cifarflow.registry.alias import (
    ALIAS,
    POINTER,
    UNCHECKED,
    AliasMoved,
    Pointer,
    alias_lock,
    alias_moves,
    alias_path,
    champion_damage,
    champion_name,
    check_link_place,
    copy_of,
    link_text,
    move_alias,
    pointer_path,
    problems,
    read_champion_version,
    read_pointer,
    recover,
    repair_alias,
)
from cifarflow.registry.model_versions import (
    VERSION_FILES,
    VERSION_NAME,
    Results,
    Scan,
    Version,
    clear_abandoned,
    commit_version,
    discard_staging,
    file_damage,
    is_whole,
    list_versions,
    load_version,
    new_staging,
    next_name,
    read_results,
    read_version,
    scan,
    staging_dir,
    version_of_model,
    versions_dir,
)
from cifarflow.registry.records import RegistryDamaged, RegistryError, VersionRecord, append_line

__all__ = [
    "ALIAS",
    "POINTER",
    "UNCHECKED",
    "VERSION_FILES",
    "VERSION_NAME",
    "AliasMoved",
    "Pointer",
    "RegistryDamaged",
    "RegistryError",
    "Results",
    "Scan",
    "Version",
    "VersionRecord",
    "alias_lock",
    "alias_moves",
    "alias_path",
    "append_line",
    "champion_damage",
    "champion_name",
    "check_link_place",
    "clear_abandoned",
    "commit_version",
    "discard_staging",
    "file_damage",
    "copy_of",
    "is_whole",
    "link_text",
    "list_versions",
    "load_version",
    "move_alias",
    "new_staging",
    "next_name",
    "pointer_path",
    "problems",
    "read_champion_version",
    "read_pointer",
    "read_results",
    "read_version",
    "recover",
    "repair_alias",
    "scan",
    "staging_dir",
    "version_of_model",
    "versions_dir",
]
