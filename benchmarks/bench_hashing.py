"""Hash throughput over the files a cached re-run verifies: sha256 vs blake2b (hashlib) vs blake3.

    python benchmarks/bench_hashing.py --data-dir data [--source data/cache/cifar-10-python.tar.gz]

The files are the ones a re-run with nothing changed hashes before it reuses a stage: the Parquet
shards (`D/parquet/**/*.parquet`), the feature arrays (`D/features/<key>/*.npy`), the trained
model(s) (`D/models/<key>/model.keras`) and, with --source, the local source archive (its content
is part of the ingest key). Each algorithm reads the files the way `cifarflow.files.file_digest`
does (1 MiB chunks); a plain read pass first warms the page cache and gives the I/O floor, so the
numbers are hashing on warm files, as on a re-run right after the previous one.
blake3 is measured only when `import blake3` works.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CHUNK_BYTES = 1 << 20  # as cifarflow.files.file_digest


def verified_files(data_dir: Path, source: str | Path | None = None) -> dict[str, list[Path]]:
    """The files a cached re-run hashes, grouped: parquet, features, model (and source if given)."""
    data_dir = Path(data_dir)
    groups = {
        "parquet": sorted((data_dir / "parquet").rglob("*.parquet")),
        "features": sorted((data_dir / "features").glob("*/*.npy")),
        "model": sorted((data_dir / "models").glob("*/model.keras")),
    }
    if source is not None and Path(source).is_file():
        groups["source archive"] = [Path(source)]
    return {name: paths for name, paths in groups.items() if paths}


def _hashers() -> dict[str, Callable[[], object] | None]:
    hashers: dict[str, Callable[[], object] | None] = {
        "read only (no hash)": None,
        "sha256": hashlib.sha256,
        "blake2b": hashlib.blake2b,
    }
    try:
        import blake3  # type: ignore[import-not-found]

        hashers["blake3"] = blake3.blake3
    except ImportError:
        pass
    return hashers


def blake3_available() -> bool:
    return "blake3" in _hashers()


def _pass(paths: Iterable[Path], make: Callable[[], object] | None) -> float:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    started = time.perf_counter()
    for path in paths:
        digest = make() if make is not None else None
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                if digest is not None:
                    digest.update(view[:n])
        if digest is not None:
            digest.hexdigest()
    return time.perf_counter() - started


def bench_hashing(paths: Iterable[Path], repeats: int = 3) -> list[dict]:
    """Best-of-`repeats` seconds and GB/s (1e9 bytes/s) per algorithm over all `paths` together."""
    paths = list(paths)
    total = sum(p.stat().st_size for p in paths)
    _pass(paths, None)  # warm the page cache
    results = []
    for name, make in _hashers().items():
        seconds = min(_pass(paths, make) for _ in range(repeats))
        results.append({"algorithm": name, "bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9})
    return results


def markdown(groups: dict[str, list[Path]], results: list[dict]) -> str:
    sizes = ", ".join(
        f"{name} {sum(p.stat().st_size for p in ps) / 1e6:.0f} MB ({len(ps)} files)" for name, ps in groups.items()
    )
    total = results[0]["bytes"] if results else 0
    lines = [
        f"Hashing the files a cached re-run verifies: {total / 1e6:.0f} MB in all ({sizes}); warm page cache, "
        "1 MiB reads, best of 3.",
        "",
        "| algorithm | seconds | GB/s |",
        "|---|---:|---:|",
        *[f"| {r['algorithm']} | {r['seconds']:.3f} s | {r['gb_per_s']:.2f} |" for r in results],
    ]
    if not blake3_available():
        lines += ["", "blake3 not installed"]
    return "\n".join(lines)


def run(data_dir: Path, source: str | Path | None = None, repeats: int = 3) -> tuple[dict, list[dict], str]:
    """Find the files, time each algorithm over them; returns (groups, results, Markdown)."""
    groups = verified_files(data_dir, source)
    if not groups:
        raise SystemExit(f"no parquet shards, features or models under {data_dir}; run the flow first")
    results = bench_hashing([p for ps in groups.values() for p in ps], repeats=repeats)
    return groups, results, markdown(groups, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a data dir a full flow run has populated")
    parser.add_argument("--source", default=None, help="also hash this local source archive")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(Path(args.data_dir), args.source, args.repeats)[2])


if __name__ == "__main__":
    main()
