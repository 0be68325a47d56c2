"""Stage 1, ingest: the source (the CIFAR-10 python archive, or a labeled image folder or an archive of one) →
verified Parquet shards at the data set's image size + the manifest (version 2), written whole or not at all."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from cifarflow.data.archive import LABEL_NAMES, fetch_archive, is_remote, local_path, read_archive, read_label_names
from cifarflow.data.folder import ARCHIVE_SUFFIXES, describe_folder, folder_identity, ingest_folder, is_folder_source
from cifarflow.data.shards import SPLITS, build_manifest, data_set_words, verify_manifest, write_split_shards
from cifarflow.errors import ArchiveError, PipelineInputError, ShardError
from cifarflow.files import atomic_directory, read_json, write_json
from cifarflow.layout import DataLayout
from cifarflow.outputs import StageOutput, read_whole


@dataclass(frozen=True)
class IngestResult(StageOutput):
    manifest_path: Path
    dataset_sha256: str
    source_sha256: str
    rows: dict[str, int]
    label_names: list[str]  # class names in label order
    image_size: int  # S: the shards hold (S, S, 3) uint8 images

    location = property(attrgetter("manifest_path"))

    fingerprint = property(lambda self: f"{self.dataset_sha256}:{self.source_sha256}")


def result_from_manifest(manifest_path: Path, manifest: dict) -> IngestResult:
    rows = {s: manifest["splits"][s]["rows"] for s in SPLITS}
    names, size = manifest["label_names"], manifest["image_size"]
    return IngestResult(manifest_path, manifest["dataset_sha256"], manifest["source"]["sha256"], rows, names, size)


def source_digest(source: str, layout: DataLayout) -> str:
    """A local source's content identity, as its manifest records it (`source.sha256`): an archive file's sha256, or
    a folder's `folder_identity`; file digests remembered in the data dir's memo (an unchanged file is not read)."""
    return folder_identity(local_path(source).resolve(), layout.source_memo, layout.root)


def is_folder(source: str) -> bool:
    """Whether `source` is a folder source (a folder, or an archive of one), not the CIFAR-10 python archive."""
    return not is_remote(source) and is_folder_source(local_path(source))


def ingest_source(config: Any, cache_key: str | None = None, log=print, progress=None) -> IngestResult:
    """Shards and manifest for a PipelineConfig's source, image_size, test_fraction, split_seed and rows_per_shard
    (recording `cache_key`); `progress(done, total)` as a folder's files decode. The archive is fetched and verified
    first; one rename then swaps the whole parquet/ folder, so readers never see old and new shards mixed."""
    layout: DataLayout = config.layout
    archive = None if is_folder(config.source) else fetch_archive(config.source, layout.raw, config.sha256, config.md5)
    with atomic_directory(layout.parquet) as staging:
        if archive is None:
            found = ingest_folder(
                local_path(config.source),
                staging,
                config.image_size,
                config.test_fraction,
                config.split_seed,
                config.rows_per_shard,
                log,
                progress,
            )
        else:
            found = archive_shards(config.source, *archive, staging, config.image_size, config.rows_per_shard, log)
        check_same_data_set(layout, config.source, found["label_names"], found["image_size"])  # under the run's lock
        pieces = {name: found[name] for name in ("image_size", "split", "skipped")}
        manifest = build_manifest(found["shards"], found["label_names"], found["source"], **pieces)
        manifest |= {"rows_per_shard": config.rows_per_shard, "cache_key": cache_key}
        write_json(staging / "manifest.json", manifest)
    return result_from_manifest(layout.shard_manifest, manifest)


def archive_shards(
    source: str, path: Path, sha256: str, staging: Path, image_size: int, rows_per_shard: int, log=print
) -> dict[str, Any]:
    """The CIFAR-10 python archive at `path` as shards in `staging` (its images resized to `image_size` by the
    intake's rule when that is not the archive's own), and the manifest's pieces (as `ingest_folder` returns them)."""
    log(f"reading {path}")
    splits, label_names = read_archive(path)
    shards = {}
    for split in SPLITS:
        shards[split] = write_split_shards(
            split, splits.pop(split), label_names, staging / split, image_size, rows_per_shard
        )
        log(f"wrote {len(shards[split])} {split} shards")
    return {
        "label_names": label_names,
        "image_size": image_size,
        "source": {"kind": "cifar-archive", "uri": str(source), "path": str(path), "sha256": sha256}
        | {"bytes": path.stat().st_size},
        "split": {"method": "given"},
        "skipped": [],
        "shards": shards,
    }


def refuse_another_data_set(config: Any) -> None:
    """PipelineInputError (a refusal before any work): a folder source that cannot be a data set (`describe_folder`
    says why), or one whose classes or image size differ from the data set the data dir holds. The source's classes
    are read (a folder's names, an archive's member names or batches.meta) only when it is not that data set's."""
    layout, source = config.layout, config.source
    manifest = read_whole(lambda: read_json(layout.shard_manifest))
    recorded = manifest.get("source", {}) if isinstance(manifest, dict) else {}
    names = manifest["label_names"] if is_source_of(source, layout, recorded) else source_label_names(source)
    if names is not None:
        check_same_data_set(layout, source, names, config.image_size)


def check_same_data_set(layout: DataLayout, source: str, names: list[str], image_size: int) -> None:
    """PipelineInputError when the data dir holds a data set of other class names (or order) or another image size
    (shards from before image sizes were recorded hold none)."""
    manifest = read_whole(lambda: read_json(layout.shard_manifest))
    if not isinstance(manifest, dict) or "image_size" not in manifest:
        return
    held, side = list(manifest["label_names"]), manifest["image_size"]
    if (list(names), image_size) != (held, side):
        hint = f" (or pass --image-size {side})" if list(names) == held else ""
        raise PipelineInputError(
            f"{layout.root} holds {data_set_words(held, side)}; {source} has {data_set_words(names, image_size)}; "
            f"a data dir holds one data set: use another --data-dir{hint}"
        )


def is_source_of(source: str, layout: DataLayout, recorded: dict[str, Any]) -> bool:
    """Whether the manifest's `recorded` source is `source` (a URL by name, a local one by content)."""
    if not recorded:
        return False
    if is_remote(source):
        return recorded.get("uri") == source
    return not local_path(source).is_dir() and source_digest(source, layout) == recorded.get("sha256")


def source_label_names(source: str) -> list[str] | None:
    """The class names of a source, from names only (a folder's, or batches.meta; a URL is the CIFAR-10 archive: its
    official names); None for an archive that does not read (ingest says what is wrong with it)."""
    if is_remote(source):
        return list(LABEL_NAMES)
    if is_folder(source):
        return list(describe_folder(local_path(source)).label_names)
    try:
        return read_label_names(local_path(source))
    except ArchiveError:
        return None


def find_shards(layout: DataLayout, cache_key: str) -> IngestResult | None:
    """The shards on disk, if they were made for this cache key and every shard still verifies."""

    def read() -> IngestResult | None:
        if read_json(layout.shard_manifest).get("cache_key") != cache_key:
            return None
        return result_from_manifest(layout.shard_manifest, verify_manifest(layout.shard_manifest))

    return read_whole(read, ShardError)


def dataset_name(source: dict[str, Any]) -> str:
    """What the data set is called: "CIFAR-10" for the official archive, else its folder's (or archive's) name."""
    if source["kind"] == "cifar-archive":
        return "CIFAR-10"
    name = Path(str(source.get("uri") or "").rstrip("/")).name
    return next((name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.endswith(s)), name) or "data set"


def model_name(source: dict[str, Any] | None) -> str:
    """The name clients call the model by (the Open Inference Protocol's `{name}` in /v2/models/{name}): the data set's
    name folded to ASCII lower case, other characters than a-z, 0-9, '.', '_' and '-' dropped ("CIFAR-10" → "cifar-10",
    "Été photos" → "etephotos"); "classifier" when nothing is left or the model predates keeping its data set."""
    folded = unicodedata.normalize("NFKD", dataset_name(source)).encode("ascii", "ignore").decode() if source else ""
    name = re.sub(r"[^a-z0-9._-]+", "", folded.lower())
    return name.strip(".-_") or "classifier"
