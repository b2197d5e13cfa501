"""Retrieval: embedding extraction (also to an embeddings file), a FAISS gallery index,
search, ranked-list pictures."""

from .embedding_set import EMBEDDING_FILE_KEYS, EmbeddingSet, extract_checkpoint_embeddings
from .extraction import embedding_dataloader, extract_embeddings
from .index import GalleryIndex, SearchResult
from .search import (
    GallerySearch,
    PreparedIndex,
    RankedMatch,
    image_folder_dataset,
    load_gallery,
    market_style_ids,
    prepare_gallery_index,
    search_gallery,
)
from .visualization import render_ranked_list, save_ranked_list

__all__ = [
    "EMBEDDING_FILE_KEYS",
    "EmbeddingSet",
    "GalleryIndex",
    "GallerySearch",
    "PreparedIndex",
    "RankedMatch",
    "SearchResult",
    "embedding_dataloader",
    "extract_checkpoint_embeddings",
    "extract_embeddings",
    "image_folder_dataset",
    "load_gallery",
    "market_style_ids",
    "prepare_gallery_index",
    "render_ranked_list",
    "save_ranked_list",
    "search_gallery",
]
