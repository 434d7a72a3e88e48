"""The pipeline's work, as plain functions; `flows/` wraps them as Prefect tasks."""
