"""The human-feedback web app: a review page, its SQLite store, and export to training data."""
