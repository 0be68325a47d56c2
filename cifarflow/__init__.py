"""cifarflow: the CIFAR-10 pipeline's plain logic, one subpackage per concern (orchestration → stages → helpers)."""
