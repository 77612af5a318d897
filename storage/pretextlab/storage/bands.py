"""Slide levels written band by band: read a band of rows, encode its chunks, and build the next 2x
level from the band just read, all on one thread pool, straight to the level's chunk objects.

Why: writing a level through dask and Zarr's per-chunk path (``da.store``) measured 0.07x tifffile's
raw decode of the same slide; Zarr's own region writes alone reach about 0.4x of what encoding the
same chunks on two threads does. Here the pixels of a slide pass through memory once per level, in
bands of ``chunk`` rows: a band is decoded (the source's row reader, on the pool), its chunks are
encoded with the array's own codecs (on the pool) and put in the store a band at a time, and the
band's 2x box mean becomes half of the next level's band, which is written the same way. Memory
holds a few bands per level (``window``), never a level.

The stored chunks are exactly what Zarr writes for the same array (a chunk is encoded whole, edge
chunks padded with the fill value); arrays whose codecs are not Blosc, none, or pretextlab's image
codecs are written through Zarr (``arr[...] = band``), so every codec Zarr knows still works.

Per-stage CPU seconds (``StageClock``: read/decode, downsample, encode, write) come back with the
levels, so a benchmark shows which stage limits a slide's ingest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

#: (y0, y1, pool) -> the rows y0..y1 of one source level as a (rows, X, C) array; may decode on the pool
RowReader = Callable[[int, int, Executor], np.ndarray]


@dataclass
class StageClock:
    """CPU seconds per stage, summed over the threads that ran it (thread CPU time, not wall time)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.thread_time()
        try:
            yield
        finally:
            dt = time.thread_time() - t0
            with self._lock:
                self.seconds[stage] += dt

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in sorted(self.seconds.items())}


def box2_hwc(band: np.ndarray) -> np.ndarray:
    """2x2 box mean of a (y, x, C) band, rounded half up for integers (odd edge row/column dropped).

    The same numbers as :func:`pretextlab.storage.pyramid._box2` on the (C, y, x) layout: integer
    sums then ``(sum + 2) // 4``; rows are added first (contiguous), then columns.
    """
    h, w = band.shape[0] // 2 * 2, band.shape[1] // 2 * 2
    b = band[:h, :w]
    if np.issubdtype(band.dtype, np.integer):
        wide = np.uint16 if band.dtype.itemsize == 1 else np.uint32 if band.dtype.itemsize == 2 else np.uint64
        rows: np.ndarray = b[0::2].astype(wide)
        np.add(rows, b[1::2], out=rows)
        acc = rows[:, 0::2]
        np.add(acc, rows[:, 1::2], out=acc)
        np.add(acc, 2, out=acc)
        np.floor_divide(acc, 4, out=acc)
        return acc.astype(band.dtype)
    # floats: the same order of additions as _box2, so the sums round the same way
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]) / 4).astype(band.dtype)


class ChunkWriter:
    """Encodes (y, x, C) blocks as one level's (C, y, x) chunks with its own codecs, and stores them.

    Only codec chains it can reproduce exactly are taken (bytes + Blosc / nothing, or pretextlab's
    JPEG / JPEG-XL serializers); :meth:`for_array` gives ``None`` for others.
    """

    def __init__(self, arr: zarr.Array, encode: Callable[[np.ndarray], bytes]) -> None:
        self.arr = arr
        self._encode = encode
        self.chunk = tuple(int(c) for c in arr.chunks)
        self.fill = arr.fill_value
        self._store = arr.store_path.store
        self._prefix = f"{arr.store_path.path}/" if arr.store_path.path else ""

    @classmethod
    def for_array(cls, arr: zarr.Array) -> ChunkWriter | None:
        from zarr.codecs import BloscCodec, BytesCodec

        from pretextlab.storage.codecs import _ImageCodec

        codecs = list(arr.metadata.codecs)  # type: ignore[union-attr]  # v3 arrays only here
        dtype = np.dtype(arr.dtype)  # type: ignore[arg-type]  # numpy dtypes for image arrays
        if len(codecs) == 1 and isinstance(codecs[0], _ImageCodec):
            image_codec = codecs[0]
            return cls(arr, lambda hwc: image_codec.encode_image(np.ascontiguousarray(hwc)))
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        if dtype.itemsize > 1 and codecs[0].endian is not None and codecs[0].endian.value != "little":
            return None
        little = dtype.newbyteorder("<")
        rest = codecs[1:]
        if not rest:
            return cls(arr, lambda hwc: np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=little).tobytes())
        if len(rest) == 1 and isinstance(rest[0], BloscCodec):
            import numcodecs

            bc = rest[0]
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[bc.shuffle.value]  # type: ignore[union-attr]
            blosc = numcodecs.Blosc(cname=bc.cname.value, clevel=bc.clevel, shuffle=shuffle, blocksize=bc.blocksize)

            def encode(hwc: np.ndarray) -> bytes:
                chw = np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=little)
                return bytes(blosc.encode(chw))

            return cls(arr, encode)
        return None

    def encode_block(self, block: np.ndarray) -> bytes:
        """Encoded bytes of one chunk from its (y, x, C) pixels; an edge block is padded to a full chunk."""
        _, cy, cx = self.chunk
        if block.shape[0] != cy or block.shape[1] != cx:
            full = np.full((cy, cx, block.shape[2]), self.fill, dtype=block.dtype)
            full[: block.shape[0], : block.shape[1]] = block
            block = full
        return self._encode(block)

    def key(self, cy: int, cx: int) -> str:
        return self._prefix + self.arr.metadata.encode_chunk_key((0, cy, cx))

    def put(self, items: list[tuple[str, bytes]]) -> None:
        """Store encoded chunks, all of one band at once (concurrent puts on object stores).

        On a local store the files are written directly: Zarr's LocalStore writes each chunk to a
        temporary file and renames it, which measured about a third of the CPU time of a slide's
        ingest. No chunk needs to be atomic here: until the item's card says "complete", readers treat
        the whole item as absent, and a crashed write is deleted and redone.
        """
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync
        from zarr.storage import LocalStore

        if isinstance(self._store, LocalStore):
            root = Path(self._store.root)
            made: set[Path] = set()
            for key, data in items:
                path = root / key
                if path.parent not in made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent)
                with open(path, "wb") as f:
                    f.write(data)
            return

        proto = default_buffer_prototype()

        async def put_all() -> None:
            await asyncio.gather(*(self._store.set(k, proto.buffer.from_bytes(b)) for k, b in items))

        sync(put_all())


class LevelWriter:
    """Writes one level from bands of ``chunk`` rows given in order; keeps at most ``window`` bands in flight."""

    def __init__(self, arr: zarr.Array, pool: Executor, io: Executor, clock: StageClock, window: int = 2) -> None:
        self.arr = arr
        self.pool = pool
        self.io = io
        self.clock = clock
        self.window = window
        self.writer = ChunkWriter.for_array(arr)
        self.chunk = int(arr.chunks[1])
        self._pending: deque[list[Future]] = deque()
        self._puts: deque[Future] = deque()

    def add(self, band: np.ndarray, y0: int) -> None:
        """Encode and store the chunks of rows ``y0 .. y0 + len(band)`` (``y0`` on a chunk boundary)."""
        while len(self._pending) >= self.window:
            self._retire()
        if self.writer is None:  # a codec chain only Zarr knows: its own region write
            with self.clock.timed("encode+write (zarr)"):
                self.arr[:, y0 : y0 + band.shape[0], :] = np.ascontiguousarray(band.transpose(2, 0, 1))
            return
        cy = y0 // self.chunk
        futures = [self.pool.submit(self._encode, band, cy, x0) for x0 in range(0, band.shape[1], self.chunk)]
        self._pending.append(futures)

    def add_encoded(self, cy: int, chunks: list[bytes | None]) -> None:
        """Store chunk row ``cy`` as already-encoded chunks (None: leave the chunk absent, the fill value)."""
        assert self.writer is not None
        while len(self._pending) >= self.window:
            self._retire()
        done: list[Future] = []
        for cx, data in enumerate(chunks):
            if data is not None:
                f: Future = Future()
                f.set_result((self.writer.key(cy, cx), data))
                done.append(f)
        self._pending.append(done)

    def _encode(self, band: np.ndarray, cy: int, x0: int) -> tuple[str, bytes]:
        assert self.writer is not None
        with self.clock.timed("encode"):
            data = self.writer.encode_block(band[:, x0 : x0 + self.chunk])
        return self.writer.key(cy, x0 // self.chunk), data

    def _retire(self) -> None:
        """Hand the oldest band's encoded chunks to the I/O thread (waits for its encoding, and for
        the I/O thread when ``window`` puts are queued, so memory stays bounded)."""
        futures = self._pending.popleft()
        items = [f.result() for f in futures]
        assert self.writer is not None
        while len(self._puts) >= self.window:
            self._puts.popleft().result()
        self._puts.append(self.io.submit(self._put, items))

    def _put(self, items: list[tuple[str, bytes]]) -> None:
        assert self.writer is not None
        with self.clock.timed("write"):
            self.writer.put(items)

    def finish(self) -> None:
        while self._pending:
            self._retire()
        while self._puts:
            self._puts.popleft().result()


class PyramidWriter:
    """One level's bands in, that level and every 2x level below it written (a cascade of LevelWriters).

    ``arrays[0]`` takes the bands given to :meth:`add`; each band's box mean (on the pool) fills half a
    band of ``arrays[1]``, and so on down the list.
    """

    def __init__(
        self, arrays: list[zarr.Array], pool: Executor, io: Executor, clock: StageClock, window: int = 2
    ) -> None:
        self.levels = [LevelWriter(a, pool, io, clock, window) for a in arrays]
        self.pool = pool
        self.clock = clock
        # per level below the first: rows gathered so far for its next band, and where that band starts
        self._parts: list[list[np.ndarray]] = [[] for _ in arrays]
        self._next_y: list[int] = [0 for _ in arrays]
        self._halves: deque[tuple[int, Future]] = deque()

    def add(self, band: np.ndarray, y0: int, stored: bool = False) -> None:
        """Take the next band of the first level (``stored``: its chunks were stored as they came)."""
        if stored:
            self._halves.append((1, self.pool.submit(self._box, band)))
        else:
            self._add(0, band, y0)
        # take finished box means in order, one band behind, so the pool works on both at once
        while len(self._halves) > 1 or (self._halves and self._halves[0][1].done()):
            self._take_half()

    def _add(self, level: int, band: np.ndarray, y0: int) -> None:
        if band.shape[0] == 0:  # the box mean of a level's last, single row
            return
        self.levels[level].add(band, y0)
        if level + 1 < len(self.levels):
            self._halves.append((level + 1, self.pool.submit(self._box, band)))

    def _box(self, band: np.ndarray) -> np.ndarray:
        with self.clock.timed("downsample"):
            return box2_hwc(band)

    def _take_half(self) -> None:
        """Add the oldest finished box mean to its level; every full chunk row of that level (the
        levels' chunks may differ) becomes a band, and so does what is left at the level's end."""
        level, fut = self._halves.popleft()
        parts = self._parts[level]
        parts.append(fut.result())
        rows = sum(p.shape[0] for p in parts)
        target, chunk = self.levels[level].arr.shape[1], self.levels[level].chunk
        while rows and (rows >= chunk or self._next_y[level] + rows >= target):
            pending = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            y0 = self._next_y[level]
            take = min(chunk, rows, target - y0)
            parts.clear()
            if take < rows and y0 + take < target:
                parts.append(pending[take:])
            self._next_y[level] += take
            rows = sum(p.shape[0] for p in parts)
            self._add(level, pending[:take], y0)

    def finish(self) -> None:
        while self._halves:
            self._take_half()
        for lw in self.levels:
            lw.finish()


class TileRows:
    """A :data:`RowReader` over a level stored as a grid of tiles: subclasses decode one row of tiles
    (:meth:`decode_row`, on the pool); this assembles bands, crops edge tiles, fills absent ones, and
    keeps the last row of tiles, so a row that straddles two bands is decoded once."""

    def __init__(self, height: int, width: int, th: int, tw: int, samples: int, dtype: np.dtype, fill: int = 0):
        self.height, self.width, self.th, self.tw = height, width, th, tw
        self.samples, self.dtype, self.fill = samples, np.dtype(dtype), fill
        self.ny, self.nx = -(-height // th), -(-width // tw)
        self._cached: tuple[int, list[np.ndarray | None]] | None = None

    def decode_row(self, r: int, pool: Executor) -> list[np.ndarray | None]:
        """The ``nx`` tiles of tile row ``r`` as (th, tw, samples)-shaped arrays (None: absent)."""
        raise NotImplementedError

    def _row(self, r: int, pool: Executor) -> list[np.ndarray | None]:
        if self._cached is None or self._cached[0] != r:
            self._cached = (r, self.decode_row(r, pool))
        return self._cached[1]

    def __call__(self, y0: int, y1: int, pool: Executor) -> np.ndarray:
        out = np.empty((y1 - y0, self.width, self.samples), dtype=self.dtype)
        for r in range(y0 // self.th, -(-y1 // self.th)):
            ty0 = r * self.th
            a, b = max(y0, ty0), min(y1, ty0 + self.th)
            for c, tile in enumerate(self._row(r, pool)):
                x0, x1 = c * self.tw, min(self.width, (c + 1) * self.tw)
                dest = out[a - y0 : b - y0, x0:x1]
                if tile is None:
                    dest[...] = self.fill
                else:
                    dest[...] = tile.reshape(-1, tile.shape[-2], tile.shape[-1])[a - ty0 : b - ty0, : x1 - x0]
        return out


class _StagePool:
    """The pool as a row reader sees it: work it submits is timed as the "decode" stage."""

    def __init__(self, pool: Executor, clock: StageClock) -> None:
        self._pool, self._clock = pool, clock

    def _timed(self, fn: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            with self._clock.timed("decode"):
                return fn(*args, **kwargs)

        return run

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        return self._pool.submit(self._timed(fn), *args, **kwargs)

    def map(self, fn: Callable, *iterables: Iterable) -> Iterator:
        return self._pool.map(self._timed(fn), *iterables)


def dask_rows(level: object) -> RowReader:
    """A row reader over a lazy (Y, X, C) dask level: the fallback for readers without their own."""

    def read(y0: int, y1: int, pool: Executor) -> np.ndarray:
        return np.asarray(level[y0:y1])  # type: ignore[index]  # dask computes with the writer's scheduler

    return read


def write_bands(
    reader: RowReader,
    arrays: list[zarr.Array],
    pool: Executor,
    io: Executor,
    clock: StageClock,
    encoded: Callable[[int], list[bytes | None]] | None = None,
) -> None:
    """Read ``arrays[0]``'s level from ``reader`` in bands of one chunk row and write it and its 2x levels.

    ``pool`` decodes, encodes and downsamples; ``io`` stores encoded bands (one thread is enough:
    a band's chunks are put concurrently), so the coordinating thread never waits on storage.
    ``encoded``, when given, returns chunk row ``cy`` of ``arrays[0]`` already encoded (a source's
    own JPEG tiles): those are stored as they are, and the level is decoded only if levels follow.
    """
    pyramid = PyramidWriter(arrays, pool, io, clock)
    if encoded is not None and pyramid.levels[0].writer is None:
        raise ValueError("encoded chunks need an array whose chunks the band writer can store")
    decode_pool: Executor = _StagePool(pool, clock)  # type: ignore[assignment]  # submit/map are all readers use
    height, chunk = int(arrays[0].shape[1]), int(arrays[0].chunks[1])
    for y0 in range(0, height, chunk):
        y1 = min(height, y0 + chunk)
        if encoded is not None:
            with clock.timed("copy"):
                chunks = encoded(y0 // chunk)
            pyramid.levels[0].add_encoded(y0 // chunk, chunks)
            if len(arrays) == 1:
                continue
        with clock.timed("read"):  # the coordinating thread's share; decoding on the pool counts as "decode"
            band = reader(y0, y1, decode_pool)
        if band.shape[0] != y1 - y0 or band.shape[1] != arrays[0].shape[2]:
            raise ValueError(f"row reader gave {band.shape[:2]} for rows {y0}..{y1} of {arrays[0].shape[1:]}")
        pyramid.add(band, y0, stored=encoded is not None)
    pyramid.finish()
