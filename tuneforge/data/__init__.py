"""Datasets: sources, record formats, chat templates and label masks, batching, bundled data, `data check`."""
