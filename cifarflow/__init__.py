"""cifarflow: the plain logic of the CIFAR-10 pipeline, one subpackage per concern.

Imports run one way: `orchestration` (cache keys, the stage runner, Prefect artifacts) uses the
stages' logic (`data`, `models`, `training`, `evaluation`, `reporting`, `promotion`, `sweep`), which
use the shared helpers here (`config`, `layout`, `errors`, `files`, `lock`, `environment`). Nothing
in the package imports `tasks` or `flows`; only `orchestration` imports Prefect.
"""
