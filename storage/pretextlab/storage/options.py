"""How items are written: chunking, compression, pyramid depth. Validated at the edge (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ZarrOptions(BaseModel):
    """Zarr array settings for ingested items."""

    model_config = ConfigDict(extra="forbid")

    chunk: int = Field(
        512, ge=64, le=8192, multiple_of=16, description="chunk edge (pixels) of slide levels, a multiple of 16"
    )
    compressor: Literal["auto", "zstd", "lz4", "none", "jpeg", "jpegxl"] = Field(
        "auto",
        description=(
            "pixel codec: auto (lz4 for slide levels, zstd for everything else), zstd / lz4 (Blosc, lossless), "
            "none, or lossy jpeg / jpegxl for sources that were lossy already (uint8 images of 1 or 3 channels, "
            "one per chunk; other arrays stay zstd; a source's JPEG tiles and files are kept as they are)"
        ),
    )
    clevel: int | None = Field(None, ge=0, le=9, description="compression level (default: zstd 1, lz4 5)")
    quality: int = Field(
        90, ge=1, le=100, description="jpeg / jpegxl: encoder quality (JPEG sources: kept as they are)"
    )
    min_level_size: int = Field(
        512, ge=16, description="build 2x levels until the longest side is at most this many pixels"
    )
    threads: int = Field(2, ge=1, le=64, description="dask threads inside one item's write")
    collection_file_bytes: int = Field(
        16 << 20, ge=1 << 16, description="collections: raw bytes of images per stored file (Zarr shard)"
    )

    def resolved(self, kind: str) -> ZarrOptions:
        """These options with ``auto`` made concrete for an item kind ("slide", "cine", "image",
        "collection"): lz4 for slide levels, zstd for the rest.

        Why lz4 for slides: a slide's ingest and its training stream are bound by the codec. On real
        H&E (TCGA SVS level 0, 512 px chunks, 2 cores) Blosc-lz4 encoded 4.2x and decoded 4x faster
        than Blosc-zstd-1 for 15 % more bytes (benchmarks/ingest.py --codecs; docs/storage.md).
        """
        if self.compressor != "auto":
            return self
        return self.model_copy(update={"compressor": "lz4" if kind == "slide" else "zstd"})

    @property
    def level(self) -> int:
        """The compression level: ``clevel``, or 1 for zstd and 5 for Blosc-lz4 (faster than 1, same size)."""
        if self.clevel is not None:
            return self.clevel
        return 5 if self.compressor == "lz4" else 1

    @property
    def lossy(self) -> bool:
        return self.compressor in ("jpeg", "jpegxl")

    def codecs(self, itemsize: int = 1) -> list:
        """Lossless Blosc compressors (bytes -> bytes); zstd when a lossy codec is chosen.

        Byte shuffle only for multi-byte samples: on uint8 it reorders nothing and measured about
        15 % slower to encode and 40 % slower to decode.
        """
        from zarr.codecs import BloscCodec

        if self.compressor == "none":
            return []
        cname: Literal["zstd", "lz4"] = "lz4" if self.compressor == "lz4" else "zstd"
        level = self.level if cname == self.compressor else 1
        return [BloscCodec(cname=cname, clevel=level, shuffle="shuffle" if itemsize > 1 else "noshuffle")]

    def lossy_fits(self, chunks: tuple[int, ...], dtype: object, dims: list[str]) -> bool:
        """Whether a lossy codec applies to an array: one uint8 image of 1 or 3 channels per chunk."""
        import numpy as np

        return (
            self.lossy
            and list(dims[-3:]) == ["c", "y", "x"]
            and all(int(n) == 1 for n in chunks[:-3])
            and int(chunks[-3]) in (1, 3)
            and np.dtype(dtype) == np.uint8  # type: ignore[call-overload]
        )

    def array_codecs(self, chunks: tuple[int, ...], dtype: object, dims: list[str]) -> dict:
        """``serializer`` / ``compressors`` for ``create_array``: the lossy codec where it fits, else Blosc."""
        if self.lossy_fits(chunks, dtype, dims):
            from pretextlab.storage.codecs import CODECS, register

            register()
            return {"serializer": CODECS[self.compressor](quality=self.quality), "compressors": None}
        import numpy as np

        return {"compressors": self.codecs(np.dtype(dtype).itemsize)}  # type: ignore[call-overload]
