"""Retrieval: embedding extraction, a FAISS gallery index, ranked-list pictures."""

from .extraction import embedding_dataloader, extract_embeddings
from .index import GalleryIndex, SearchResult
from .visualization import render_ranked_list, save_ranked_list

__all__ = [
    "GalleryIndex",
    "SearchResult",
    "embedding_dataloader",
    "extract_embeddings",
    "render_ranked_list",
    "save_ranked_list",
]
