"""What lands on disk: the Parquet records and each run's identity, folder, lock and failure row. No torch."""
