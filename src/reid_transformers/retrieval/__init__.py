"""Retrieval: a FAISS gallery index with identity / camera / path metadata."""

from .index import GalleryIndex, SearchResult

__all__ = ["GalleryIndex", "SearchResult"]
