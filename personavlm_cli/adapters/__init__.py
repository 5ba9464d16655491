"""Adapters to the outside world: model runtime, vector store, encoders, files.

Each module imports its heavy library inside the functions that need it, so that importing
the adapter itself stays cheap.
"""
