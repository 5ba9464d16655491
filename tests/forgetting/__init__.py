"""Forgetting: by id, by text, on a server store, the evaluation of forgetting lives."""
