"""DICOM-WSI per-tile cost against the number of frames in a level: flat once the frame offsets are read
once per level (issue 18 item 5).

    python benchmarks/dicom_wsi.py                                  # 100 and 10,000 frames, 3 repeats
    python benchmarks/dicom_wsi.py --frames 100,2500 --tiles 200 --repeats 1   # quick (make bench)

For each level size a generated VL WSI level (``synthetic.write_wsi_dicom_level``: 64 px JPEG baseline
tiles, one fragment per frame, no offset table, as the CMU sample in shared/data: the case where frames
are found by scanning fragments) and the same ``--tiles`` frame indices, uniform over the level, read
and decoded two ways, alternating per repeat:
  * before: ``pydicom.pixels.pixel_array(path, index=i)`` per tile (what the reader did: header parse
    and frame search per tile);
  * after: ``FrameIndex.build(path)`` once per level (timed apart: ``index_ms``), then
    ``index.decode(i)`` per tile (one seek + one read of that frame's bytes, pydicom's decoder).
Figures (benchmarks/harness.py): per-tile ms at the largest level vs the smallest (flat = ratio ~1),
before and after, and after vs before at the largest level. Peak PSS of this process (MiB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PeakPss, compare, print_figures, write_results


def per_tile_ms(fn, indices: list[int]) -> float:
    fn(indices[0])  # warm-up, not timed: decoder plugins, the page cache
    t0 = time.perf_counter()
    for i in indices:
        fn(i)
    return (time.perf_counter() - t0) / len(indices) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="100,10000", help="comma-separated frames per level")
    ap.add_argument("--tiles", type=int, default=500, help="tiles read per measurement")
    ap.add_argument("--tile", type=int, default=64, help="tile edge in pixels")
    ap.add_argument("--offset-table", choices=["none", "bot", "eot"], default="none")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pydicom.pixels import pixel_array

    from pretextlab.storage.readers.dicom_frames import FrameIndex
    from pretextlab.storage.synthetic import write_wsi_dicom_level

    sizes = [int(v) for v in args.frames.split(",")]
    rng = np.random.default_rng(0)
    runs: dict[int, dict[str, list[float]]] = {n: {"before": [], "after": [], "index_ms": []} for n in sizes}
    with tempfile.TemporaryDirectory(prefix="pretextlab-bench-dicom-") as tmp, PeakPss() as mem:
        paths = {
            n: write_wsi_dicom_level(
                Path(tmp) / f"level-{n}.dcm", n, tile=args.tile, compression="jpeg", offset_table=args.offset_table
            )
            for n in sizes
        }
        picks = {n: [int(i) for i in rng.integers(0, n, args.tiles)] for n in sizes}
        for rep in range(args.repeats):
            for n in sizes:  # before and after alternate per repeat and level
                path = str(paths[n])
                runs[n]["before"].append(per_tile_ms(lambda i, p=path: pixel_array(p, index=i), picks[n]))
                t0 = time.perf_counter()
                ix = FrameIndex.build(path)
                runs[n]["index_ms"].append((time.perf_counter() - t0) * 1e3)
                runs[n]["after"].append(per_tile_ms(ix.decode, picks[n]))
                print(
                    f"repeat {rep + 1}: {n:6d} frames: before {runs[n]['before'][-1]:.3f} ms/tile, after "
                    f"{runs[n]['after'][-1]:.3f} ms/tile (offsets once: {runs[n]['index_ms'][-1]:.1f} ms, "
                    f"{ix.source})",
                    flush=True,
                )
        file_mb = {n: paths[n].stat().st_size / 1e6 for n in sizes}
    small, large = sizes[0], sizes[-1]
    desc = f"{args.tile} px JPEG tiles, offset table {args.offset_table}"
    figures = [
        compare(
            f"DICOM-WSI per-tile read+decode, {large} frames, offsets once per level ({desc})",
            "ms/tile",
            runs[large]["after"],
            f"the same at {small} frames",
            runs[small]["after"],
            better="lower",
            note="flat (ratio ~1) is the goal",
        ),
        compare(
            f"DICOM-WSI per-tile read+decode, {large} frames, pixel_array(path, index) per tile ({desc})",
            "ms/tile",
            runs[large]["before"],
            f"the same at {small} frames",
            runs[small]["before"],
            better="lower",
            note="the reader before: grows with the frames",
        ),
        compare(
            f"DICOM-WSI per-tile read+decode at {large} frames, offsets once per level",
            "ms/tile",
            runs[large]["after"],
            "pydicom pixel_array(path, index) per tile",
            runs[large]["before"],
            better="lower",
        ),
        compare(
            f"DICOM-WSI offsets read once for a {large}-frame level",
            "ms",
            runs[large]["index_ms"],
            None,
        ),
    ]
    write_results(
        "dicom_wsi",
        figures,
        frames=sizes,
        tiles=args.tiles,
        tile=args.tile,
        offset_table=args.offset_table,
        file_mb=file_mb,
        runs={str(n): r for n, r in runs.items()},
        peak_mib=round(mem.peak_mib, 1),
    )
    print_figures(figures)


if __name__ == "__main__":
    main()
