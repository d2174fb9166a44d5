"""Many adapters on one model: set, delete, list, and mixed batches."""
