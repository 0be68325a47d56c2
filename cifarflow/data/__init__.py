"""Getting the images: the CIFAR-10 archive, Parquet shards, ingest, and the fitted transform (preprocess)."""
