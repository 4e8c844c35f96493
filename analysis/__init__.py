"""Analysis: tables, figures, reports and offline replay of stopping criteria.

Pure functions of the Parquet records (benchmark.store.records); nothing here imports torch.
"""
