"""Decode -> ADM resize -> PNG-encode the images of a source, in order, in worker processes.

`encode_entries(...)` yields `(png_bytes, None)` or `(None, reason)` for every entry, in the order
given, whatever the number of workers. With `num_workers` = 0 the work runs in this process;
otherwise a pool of that many processes (forked, so they share the opened source) works on chunks
of `CHUNK` entries with at most `4 * num_workers` chunks in flight: memory stays bounded however
large the dataset is.

A worker that dies (a crash inside an image decoder) is not a hang: the pool is restarted, the
chunks in flight are retried, and the chunk that broke it is retried one image at a time, so the
image that kills a worker is found and reported as a bad image (`data.on_bad_image` then decides:
fail naming it, or skip it).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gdm.data.preprocess import center_crop_resize, encode_png, to_mode
from gdm.data.sources import Entry, Record, SourceData

CHUNK = 64
Result = tuple[bytes | None, str | None]

# What forked workers need; set in the parent right before the pool starts (inherited by fork).
_JOB: tuple[SourceData, int, int, bool] | None = None


def process_record(rec: Record, resolution: int, channels: int, allow_upscale: bool) -> Result:
    if rec.error:
        return None, rec.error
    image = to_mode(rec.image, channels)
    if not allow_upscale and min(image.size) < resolution:
        return None, (
            f"{rec.source}: image is {image.size[0]}x{image.size[1]}, smaller than data.resolution "
            f"{resolution} (upscaling is not done: set data.resolution lower or remove the file)"
        )
    if image.size != (resolution, resolution):
        image = center_crop_resize(image, resolution)
    return encode_png(image), None


def encode_one(data: SourceData, entry: Entry, resolution: int, channels: int, allow_upscale: bool) -> Result:
    try:
        return process_record(data.load(entry), resolution, channels, allow_upscale)
    except Exception as exc:  # one bad image must not take the run down unless data.on_bad_image says so
        return None, f"{entry.source}: cannot be processed ({type(exc).__name__}: {exc})"


def _work(chunk: list[Entry]) -> list[Result]:
    data, resolution, channels, allow_upscale = _JOB
    return [encode_one(data, e, resolution, channels, allow_upscale) for e in chunk]


def _crashed(entry: Entry) -> Result:
    return None, (f"{entry.source}: the prepare worker process died while processing this image "
                  "(a crash inside an image decoder?)")


def encode_entries(data: SourceData, entries: list[Entry], resolution: int, channels: int, allow_upscale: bool,
                   num_workers: int) -> Iterator[Result]:
    if num_workers < 0:
        from gdm.errors import ConfigError

        raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
    if num_workers == 0:
        for e in entries:
            yield encode_one(data, e, resolution, channels, allow_upscale)
        return
    global _JOB
    _JOB = (data, resolution, channels, allow_upscale)
    todo = deque(entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK))
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(num_workers, mp_context=ctx)
    inflight: deque[tuple[list[Entry], Future]] = deque()
    try:
        while todo or inflight:
            while todo and len(inflight) < 4 * num_workers:
                chunk = todo.popleft()
                inflight.append((chunk, pool.submit(_work, chunk)))
            chunk, fut = inflight.popleft()
            try:
                results = fut.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = ProcessPoolExecutor(num_workers, mp_context=ctx)
                retry = [c for c, _ in inflight]
                inflight.clear()
                if len(chunk) == 1:
                    yield _crashed(chunk[0])  # found the image that kills a worker
                    todo.extendleft(reversed(retry))
                else:
                    todo.extendleft(reversed([[e] for e in chunk] + retry))
                continue
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOB = None
