"""onnxmeta authoring: discover Hugging Face metadata and embed it into ONNX files.

    from authoring import embed_metadata, read_metadata
    embed_metadata("model.onnx", "bert-base-uncased", include_vocab=True)
"""

from onnxmeta_runtime import (
    FORMAT_VERSION,
    MetadataEmbeddingError,
    MetadataError,
    MetadataExtractionError,
    MetadataReadError,
    MetadataValidationError,
    ProcessorReconstructionError,
    TaskDetectionError,
    UnsupportedVersionError,
    __version__,
    read_metadata,
)

from .discovery import EMBEDDING_LEVELS, DiscoveryResult, EmbeddingLevel, MetadataDiscovery, discover
from .embedder import EmbedReport, FolderResult, embed, embed_folder, embed_metadata, write_props
from .inspection import describe, validate
from .seq2seq import MergeReport, describe_layout, merge_export
from .tasks import detect_task

__all__ = (
    "EMBEDDING_LEVELS",
    "FORMAT_VERSION",
    "DiscoveryResult",
    "EmbedReport",
    "EmbeddingLevel",
    "FolderResult",
    "MergeReport",
    "MetadataDiscovery",
    "MetadataEmbeddingError",
    "MetadataError",
    "MetadataExtractionError",
    "MetadataReadError",
    "MetadataValidationError",
    "ProcessorReconstructionError",
    "TaskDetectionError",
    "UnsupportedVersionError",
    "__version__",
    "describe",
    "describe_layout",
    "detect_task",
    "discover",
    "embed",
    "embed_folder",
    "embed_metadata",
    "merge_export",
    "read_metadata",
    "validate",
    "write_props",
)
