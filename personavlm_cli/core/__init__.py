"""The method: memories, recall, the response and update stages, personality.

Nothing in this package imports the CLI libraries (typer, rich) or the heavy runtimes
(llama_cpp, chromadb, torch, open_clip): it talks to them through the adapters' interfaces.
"""
