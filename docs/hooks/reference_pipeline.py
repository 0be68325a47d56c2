"""The pipeline's reference pages: the stage graph (stages.md), metrics.json and model_card.json (metrics.md), the
data dir (data-dir.md), the events and the triggers that listen for them (events.md)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import yaml
from reference_markdown import ROOT, anchor, cell, code, first_sentence, rows

DEPLOYMENTS = ROOT / "deployments" / "prefect.yaml"


def codes(names) -> str:
    return ", ".join(map(code, names)) or "—"


def stages_page() -> str:
    from cifarflow.orchestration.stages import SPECS, STAGES

    chain = " → ".join(f"[{name}](#{anchor(name)})" for name in STAGES)
    out = [
        "# Stages\n",
        "The pipeline's stages in the order the flow runs them (`flows/cifar_flow.py`), generated from their one "
        "declaration, `SPECS` in `cifarflow/orchestration/stages.py`:\n",
        f"{chain}\n",
        "A stage reads the outputs of its upstream stages and its *given* values, and its output is stored under a "
        "**key**: a hash of the configuration fields it depends on (see [Configuration](configuration.md); "
        "`train_epochs` and the like are a field or, unset, the preset's value), the fingerprints of its "
        "upstream outputs and given values, the source code of the modules it runs and the versions of the "
        "libraries it uses. An output whose key is unchanged and whose files are whole is reused (`Cached`); "
        "`<key>` in a path below is that key. Paths are relative to the data dir ([Data dir](data-dir.md)).\n",
        rows(
            ["stage", "reads", "writes"],
            *[
                [f"[{name}](#{anchor(name)})", codes([*spec.upstream, *(given for given, _ in spec.given)])]
                + [code(spec.writes)]
                for name, spec in SPECS.items()
            ],
        ),
    ]
    for name, spec in SPECS.items():
        derived = first_sentence(inspect.getdoc(spec.inputs) or "") if spec.inputs else ""
        facts = [
            ["upstream stages", ", ".join(f"[{up}](#{anchor(up)})" for up in spec.upstream) or "—"],
            ["given values", codes(given for given, _ in spec.given)],
            ["configuration in its key", codes(spec.params)],
            ["derived key inputs", f"{code(spec.inputs.__name__)}: {cell(derived)}" if spec.inputs else "—"],
            ["code in its key", codes(spec.code)],
            ["libraries in its key", codes(spec.libraries)],
            ["writes", code(spec.writes)],
        ]
        out += [f"## {name}\n", rows(["", ""], *facts)]
    return "\n".join(out)


def metrics_page() -> str:
    from cifarflow.reporting.report import METRICS_FIELDS, MODEL_CARD_FIELDS

    return "\n".join(
        [
            "# metrics.json and model_card.json\n",
            "Each pipeline run's report folder, `reports/<run-name>/` in the data dir (and `reports/latest`, a link to "
            "the newest), holds `metrics.json` and `model_card.json` beside `report.md`, the plots and `README.md` "
            "(the standard model card rendered from both). Their top-level fields, generated from `METRICS_FIELDS` and "
            "`MODEL_CARD_FIELDS` in `cifarflow/reporting/report.py` (the report stage refuses to write a file with "
            "other fields, so this list cannot drift from the files).\n",
            "## metrics.json\n",
            "A stable contract for scripts and dashboards.\n",
            rows(["field", "meaning"], *[[code(name), cell(about)] for name, about in METRICS_FIELDS.items()]),
            "## model_card.json\n",
            "The run's facts: what was trained, on which data, from where.\n",
            rows(["field", "meaning"], *[[code(name), cell(about)] for name, about in MODEL_CARD_FIELDS.items()]),
        ]
    )


def layout_paths() -> dict[str, tuple[str, str]]:
    """`DataLayout`'s attributes, by path → (path under the data dir, what lives there); a folder's path ends in `/`
    (a name without a suffix), a keyed folder's in `/<key>/`."""
    from cifarflow.layout import DataLayout, _Keyed, _Under

    def path(where: _Under) -> str:
        if isinstance(where, _Keyed):
            return "/".join(where.parts) + f"/<{where.key}>/"
        return "/".join(where.parts) + ("" if Path(where.parts[-1]).suffix else "/")

    found = {name: (path(where), where.about) for name, where in vars(DataLayout).items() if isinstance(where, _Under)}
    return dict(sorted(found.items(), key=lambda item: item[1][0].lstrip(".").split("/")))


def data_dir_page() -> str:
    return "\n".join(
        [
            "# Data dir\n",
            "Everything a pipeline run, a command or the service writes lives in one data directory (`--data-dir`, "
            "default `data`). Every path comes from one place, `DataLayout` in `cifarflow/layout.py`; this page is "
            "generated from it. `<key>` is a stage's cache key ([Stages](stages.md)). Nothing in a data dir names its "
            "own absolute path, so it can be moved, copied or restored elsewhere. Everything can be deleted and is "
            "recomputed by the next run but what no run can recompute, which `make clean-data` keeps: "
            f"{', '.join(code(name) for name in kept_by_clean_data())}.\n",
            rows(
                ["path", "attribute", "what lives there"],
                *[[code(path), code(name), cell(about)] for name, (path, about) in layout_paths().items()],
            ),
        ]
    )


def kept_by_clean_data() -> list[str]:
    """The names the Makefile's `clean-data` recipe spares (`! -name NAME`), but for this README and .gitkeep."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^clean-data:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE).group(1)
    return [name for name in re.findall(r"! -name (\S+)", recipe) if name not in {"README.md", ".gitkeep"}]


def flow_name(entrypoint: str) -> str:
    """The flow's name for `flows/cifar_flow.py:cifar_pipeline`: a deployment's full name begins with it."""
    import importlib

    path, function = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function).name


def triggers() -> list[dict[str, str]]:
    """Each event trigger of deployments/prefect.yaml: its deployment, name, events, match and parameters."""
    found = []
    for deployment in yaml.safe_load(DEPLOYMENTS.read_text())["deployments"]:
        for trigger in deployment.get("triggers") or []:
            found.append(
                {
                    "deployment": f"{flow_name(deployment['entrypoint'])}/{deployment['name']}",
                    "entrypoint": deployment["entrypoint"],
                    "name": trigger.get("name", ""),
                    "events": trigger["expect"],
                    "match": trigger.get("match", {}),
                    "parameters": trigger.get("parameters", {}),
                }
            )
    return found


def events_page() -> str:
    from cifarflow.orchestration.events import EVENTS, resource_id

    out = [
        "# Events\n",
        "The Prefect events the product emits (generated from `EVENTS` in `cifarflow/orchestration/events.py`). "
        "They go to the server in `PREFECT_API_URL`; without one, Prefect drops them quietly. Each is about a data "
        "dir: its resource id names the data dir, and its payload's `data_dir` too.\n",
    ]
    for event, declared in EVENTS.items():
        listening = [t for t in triggers() if event in t["events"]]
        heard = "; ".join(f"`{t['deployment']}` (trigger `{t['name']}`)" for t in listening) or "none"
        out += [
            f"## {event}\n",
            f"When: {cell(declared.when)}.\n",
            f"Resource id: `{resource_id(event, '<data dir>')}`. Deployments listening: {heard}.\n",
            rows(["payload key", "meaning"], *[[code(key), cell(about)] for key, about in declared.payload.items()]),
        ]
    out += [
        "## Triggers\n",
        "The event triggers of `deployments/prefect.yaml` (`make schedule` deploys them): each runs its "
        "deployment when a matching event arrives, with these parameters (`{{ event.payload.data_dir }}`: the "
        "event's data dir).\n",
        rows(
            ["deployment", "entrypoint", "trigger", "on event", "match", "parameters"],
            *[
                [code(t["deployment"]), code(t["entrypoint"]), code(t["name"]), codes(t["events"])]
                + [cell(", ".join(f"`{k}: {v}`" for k, v in t["match"].items())), cell(parameters(t["parameters"]))]
                for t in triggers()
            ],
        ),
    ]
    return "\n".join(out)


def parameters(values: dict, prefix: str = "") -> str:
    """`config.data_dir: {{ event.payload.data_dir }}`, … : a deployment's nested parameters, one code span each."""
    flat = []
    for key, value in values.items():
        if isinstance(value, dict):
            flat.append(parameters(value, f"{prefix}{key}."))
        else:
            flat.append(f"`{prefix}{key}: {value}`")
    return ", ".join(flat)
