"""Errors that mean "your input is wrong": shown to people, never retried."""


class PipelineInputError(ValueError):
    """Bad input or parameter; the message says what was wrong and what to do."""


class ArchiveError(PipelineInputError):
    """The CIFAR-10 archive is missing, truncated, corrupt or fails its checksum."""


class ShardError(PipelineInputError):
    """A Parquet shard no longer matches its manifest."""


class FeatureError(PipelineInputError):
    """A preprocessed feature file is missing or no longer matches its metadata."""


class StageInputMissing(PipelineInputError):
    """A stage was asked to run alone but an upstream stage has not produced its output yet."""


class StorageError(PipelineInputError):
    """The data directory cannot be written: not writable, read-only, or the disk is full."""
