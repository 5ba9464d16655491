"""Vectors in ChromaDB: one collection per embedding space (text memories, images).

Chroma is given explicit embeddings always (``embedding_function=None``: its default embedder
downloads a model at run time), telemetry is off, and HNSW is configured at creation, because
Chroma's defaults give poor recall and cannot be changed afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import StoreError

HNSW = {"space": "cosine", "ef_search": 200, "ef_construction": 200, "max_neighbors": 32}


def _chroma():
    # Telemetry off before chromadb is imported (its client reads the environment too).
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb
    from chromadb.config import Settings

    return chromadb, Settings


class VectorIndex:
    """A user's Chroma store: embedded on disk, or a collection namespace on a Chroma server."""

    def __init__(self, path: Path | None = None, url: str | None = None, namespace: str = ""):
        chromadb, Settings = _chroma()
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        self.namespace = namespace
        self.path = path
        try:
            if url:
                from urllib.parse import urlparse

                u = urlparse(url)
                self.client = chromadb.HttpClient(host=u.hostname or "127.0.0.1", port=u.port or 8000,
                                                  ssl=u.scheme == "https", settings=settings)
                self.client.heartbeat()
            else:
                self.client = chromadb.PersistentClient(path=str(path), settings=settings)
        except Exception as exc:  # chromadb raises many kinds; all mean "cannot open"
            where = url or path
            raise StoreError(f"cannot open the vector store at {where}: {str(exc).splitlines()[0][:200]}") from None
        self._collections: dict[str, Any] = {}

    def _name(self, name: str) -> str:
        return f"{self.namespace}{name}" if self.namespace else name

    def collection(self, name: str):
        coll = self._collections.get(name)
        if coll is None:
            coll = self.client.get_or_create_collection(
                self._name(name), embedding_function=None, configuration={"hnsw": HNSW},
                metadata={"app": "personavlm"},
            )
            self._collections[name] = coll
        return coll

    def upsert(self, name: str, ids: list[str], embeddings, documents: list[str] | None = None,
               metadatas: list[dict] | None = None) -> None:
        if not ids:
            return
        kwargs: dict[str, Any] = {"ids": ids, "embeddings": [list(map(float, e)) for e in embeddings]}
        if documents is not None:
            kwargs["documents"] = documents
        if metadatas is not None:
            kwargs["metadatas"] = [{k: v for k, v in m.items() if v is not None} or None for m in metadatas]
        self.collection(name).upsert(**kwargs)

    def delete(self, name: str, ids: list[str]) -> None:
        if ids:
            self.collection(name).delete(ids=ids)

    def query(self, name: str, embedding, k: int, where: dict | None = None) -> list[tuple[str, float]]:
        """Nearest neighbours as (id, cosine similarity), best first."""
        coll = self.collection(name)
        total = coll.count()
        if total == 0 or k <= 0:
            return []
        res = coll.query(query_embeddings=[list(map(float, embedding))], n_results=min(k, total),
                         where=where or None, include=["distances"])
        return [(i, 1.0 - d) for i, d in zip(res["ids"][0], res["distances"][0])]

    def ids(self, name: str) -> set[str]:
        coll = self.collection(name)
        out: set[str] = set()
        offset = 0
        while True:
            batch = coll.get(include=[], limit=5000, offset=offset)["ids"]
            out.update(batch)
            if len(batch) < 5000:
                return out
            offset += len(batch)

    def get_embeddings(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        res = self.collection(name).get(ids=ids, include=["embeddings"])
        return {i: list(e) for i, e in zip(res["ids"], res["embeddings"])}

    def count(self, name: str) -> int:
        return self.collection(name).count()

    def drop_all(self) -> None:
        for name in list(self._collections):
            self.client.delete_collection(self._name(name))
        self._collections.clear()
