"""The promote stage's output (the decision recorded as `promotion.json` in the run's report directory) and the
baseline its cache key reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarflow.files import read_json, text_digest, write_json
from cifarflow.outputs import StageOutput, read_whole
from cifarflow.promotion.decision import NO_CHAMPION, Decision
from cifarflow.promotion.section import SECTION_BEGIN
from cifarflow.registry.store import Version, read_champion_version


@dataclass(frozen=True)
class Promotion(StageOutput):
    registry: Path
    decision_path: Path  # <report dir>/promotion.json
    promoted: bool
    summary: str
    champion_id: str  # the champion after the decision

    @property
    def location(self) -> Path:
        return self.decision_path

    @property
    def fingerprint(self) -> str:
        return text_digest(self.champion_id, self.promoted, self.summary)


def baseline_id(registry: Path, challenger_id: str) -> str:
    """The champion's model id, or the one it replaced when the challenger is the champion (a rerun's stable key)."""
    return baseline_of(read_champion_version(registry), challenger_id)


def baseline_of(champion: Version | None, challenger_id: str) -> str:
    """`baseline_id` for the champion already read (None: there is none)."""
    if champion is None:
        return NO_CHAMPION
    if champion.model_id == challenger_id:
        return champion.replaced or NO_CHAMPION
    return champion.model_id


def record_outcome(
    path: Path,
    key: str,
    baseline: str,
    decision: Decision,
    registry: Path,
    test_set_decisions: int | None = None,
    champion_version: str | None = None,
) -> Promotion:
    """Write promotion.json: the decision, its key and baseline, `test_set_decisions`, `champion_version` after it."""
    write_json(
        path,
        {
            "key": key,
            "baseline": baseline,
            "decision": decision.to_json(),
            "test_set_decisions": test_set_decisions,
            "champion_version": champion_version,
        },
    )
    return Promotion(registry, path, decision.promoted, decision.summary, decision.resulting_champion)


def current_champion_id(registry: Path) -> str:
    """The champion's model id, or NO_CHAMPION; RegistryDamaged when it is damaged."""
    version = read_champion_version(registry)
    return version.model_id if version else NO_CHAMPION


def find_promotion(report_dir: Path, key: str, registry: Path) -> Promotion | None:
    """The decision written for `key`, if the registry's champion and the report's section still agree with it."""
    path = Path(report_dir) / "promotion.json"

    def read() -> Promotion | None:
        record = read_json(path)
        decision = record["decision"]
        if record.get("key") != key or decision["resulting_champion"] != current_champion_id(registry):
            return None  # decided for other inputs, or the registry was changed or wiped since
        if SECTION_BEGIN not in (Path(report_dir) / "report.md").read_text():
            return None
        return Promotion(registry, path, decision["promoted"], decision["summary"], decision["resulting_champion"])

    return read_whole(read)
