"""cifarflow: the plain logic of the CIFAR-10 pipeline, one subpackage per concern. Imports run one way:
`orchestration` → the stages' logic → the shared helpers here; nothing imports `tasks` or `flows`."""
