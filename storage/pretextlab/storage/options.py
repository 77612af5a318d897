"""How items are written: chunking, compression, pyramid depth. Validated at the edge (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ZarrOptions(BaseModel):
    """Zarr array settings for ingested items."""

    model_config = ConfigDict(extra="forbid")

    chunk: int = Field(512, ge=64, le=8192, description="chunk edge (pixels) of slide levels")
    compressor: Literal["zstd", "lz4", "none"] = Field("zstd", description="Blosc codec for chunks")
    clevel: int = Field(1, ge=0, le=9, description="Blosc compression level")
    min_level_size: int = Field(
        512, ge=16, description="build 2x levels until the longest side is at most this many pixels"
    )
    threads: int = Field(2, ge=1, le=64, description="dask threads inside one item's write")
    collection_file_bytes: int = Field(
        16 << 20, ge=1 << 16, description="collections: raw bytes of images per stored file (Zarr shard)"
    )

    def codecs(self) -> list:
        from zarr.codecs import BloscCodec

        if self.compressor == "none":
            return []
        return [BloscCodec(cname=self.compressor, clevel=self.clevel, shuffle="shuffle")]
