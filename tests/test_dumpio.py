"""The dump reader's byte layer (tasks/sources/dumpio.py): indexed_bzip2 gives exactly the standard library's
bytes and verdicts, segments are whole pages, and the read-ahead thread stops on error and on early close."""

from __future__ import annotations

import bz2
import contextlib
import multiprocessing
import threading
from pathlib import Path

import pytest

from model.errors import CookError
from tasks.sources import dumpio
from tasks.sources.wikidump import iter_dump_documents, iter_dump_tables
from benchmarks.dumpgen_alt import write_alt_dump
from tests.dumpgen import make_pages, repeat_pages, write_dump

pytestmark = pytest.mark.timeout(300)

needs_ibz2 = pytest.mark.skipif(dumpio.indexed_bzip2 is None, reason="indexed_bzip2 is not installed (optional)")

PAGES = make_pages(120, seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dumpio")
    big = list(repeat_pages(PAGES, 1200))  # ~5.5 MB of XML: two 4 MB reads, two segments
    alt, _, _ = write_alt_dump(d / "enwiki-alt-pages-articles.xml.bz2", 6, seed=2)  # compresses ~4x, like a real dump
    return {
        "alt": alt,
        "xml": write_dump(d / "enwiki-x-pages-articles.xml", big),
        "single": write_dump(d / "enwiki-x-pages-articles.xml.bz2", big),
        "multi": write_dump(d / "enwiki-x-pages-articles-multistream.xml.bz2", big, multistream=True, pages_per_stream=50),
    }


def _read(path: Path, **kw) -> tuple[bytes, dumpio.ReadState]:
    state = dumpio.ReadState()
    data = b"".join(dumpio.decompressed_chunks(path, state, "bz2", **kw))
    return data, state


def _outcome(path: Path, **kw) -> tuple:
    """What a reader sees: (bytes, truncated, reason, decoder), or the one-line error of a file that is no bz2."""
    try:
        data, state = _read(path, **kw)
    except CookError as e:
        return None, "error", str(e), ""
    return data, state.truncated, state.reason, state.decoder


def _variants(files, tmp: Path) -> list[Path]:
    """Complete, cut at several points, and corrupted, single- and multi-stream files."""
    out = [files["single"], files["multi"], files["alt"]]
    for name, cuts, flips in (("single", (0.97,), (0.5,)), ("multi", (0.55,), ()), ("alt", (0.7,), (0.9,))):
        data = files[name].read_bytes()
        for frac in cuts:
            p = tmp / f"{name}-cut{frac}.xml.bz2"
            p.write_bytes(data[: int(len(data) * frac)])
            out.append(p)
        p = tmp / f"{name}-tail.xml.bz2"
        p.write_bytes(data[:-3])  # only the end-of-stream marker's CRC is cut
        out.append(p)
        for frac in flips:
            bad = bytearray(data)
            bad[int(len(bad) * frac)] ^= 0x5A
            p = tmp / f"{name}-corrupt{frac}.xml.bz2"
            p.write_bytes(bytes(bad))
            out.append(p)
    return out


@needs_ibz2
def test_indexed_bzip2_equals_stdlib_byte_for_byte(files, tmp_path):
    """Same bytes and the same truncation verdict and reason, on whole, cut and corrupt files, 1 or 2 threads."""
    decoders = {}
    for path in _variants(files, tmp_path):
        ref = _outcome(path, use_ibz2=False)
        assert ref[3] in ("bz2", "")
        for threads in (2, 3) if "cut" not in path.name and "tail" not in path.name else (2,):
            got = _outcome(path, threads=threads)
            assert got[:3] == ref[:3], (path.name, threads, got[1:], ref[1:])
            decoders[path.name, threads] = got[3]
    assert decoders["enwiki-x-pages-articles.xml.bz2", 2] == "indexed_bzip2x2"
    assert decoders["enwiki-x-pages-articles-multistream.xml.bz2", 3] == "indexed_bzip2x3"
    # a cut-off download never reaches indexed_bzip2 (it has no end-of-stream marker) ...
    assert decoders["single-cut0.97.xml.bz2", 2] == "bz2" and decoders["multi-tail.xml.bz2", 2] == "bz2"
    # ... a corrupt block part-way is handed over to the standard library from the same byte on
    assert decoders["alt-corrupt0.9.xml.bz2", 2] == "indexed_bzip2x2+bz2"
    assert _outcome(files["single"], threads=1)[3] == "bz2"  # one decoder thread: always libbz2 (see below)
    data, truncated, reason, _ = _outcome(tmp_path / "alt-corrupt0.9.xml.bz2", threads=2)
    assert len(data) > dumpio.IBZ2_READ_BYTES and truncated and reason.startswith("corrupt bz2 data near byte")
    whole = bz2.decompress(files["single"].read_bytes())
    assert _read(files["single"])[0] == whole == _read(files["multi"])[0]


def test_one_decoder_thread_is_the_standard_library(files):
    """While the reader thread decodes bz2, the rest of the process (the pool feeding the workers and collecting
    their results) must keep running, so the decoder must release the GIL: libbz2 and indexed_bzip2's parallel
    mode do, indexed_bzip2 on one thread does not (it stalled the main thread up to ~150 ms at a time). So one
    decoder thread is always the standard library's."""
    for threads in (1, 2):
        state = dumpio.ReadState()
        for _ in dumpio.decompressed_chunks(files["alt"], state, "bz2", threads=threads):
            break
        if threads == 1 or dumpio.indexed_bzip2 is None:
            assert state.decoder == "bz2", (threads, state.decoder)
        else:
            assert state.decoder == "indexed_bzip2x2", state.decoder


def test_stream_end_marker(files):
    assert dumpio.ends_with_stream_end(files["single"]) and dumpio.ends_with_stream_end(files["multi"])
    single = files["single"].read_bytes()
    p = files["single"].with_name("cut.bz2")
    for n in range(1, 40):  # every cut within the last 40 bytes
        p.write_bytes(single[:-n])
        assert not dumpio.ends_with_stream_end(p), n


def test_not_bz2_is_one_line(tmp_path):
    p = tmp_path / "x.xml.bz2"
    p.write_bytes(b"BZh9" + b"\x00" * 5000)
    for use in (True, False):
        with pytest.raises(CookError, match="not a valid bz2 file") as e:
            _read(p, use_ibz2=use)
        assert "\n" not in str(e.value)


def test_segments_are_whole_pages(files):
    """Fed in odd-sized chunks (pages straddle them), segments are whole pages that add up to the input."""
    data = files["xml"].read_bytes()
    chunks = (data[i: i + 777_777] for i in range(0, len(data), 777_777))
    heads = []
    segs = list(dumpio.segments(chunks, dumpio.ReadState(), files["xml"], lambda head, path: heads.append(head)))
    assert len(segs) >= 2 and all(s.endswith(b"</page>") for s in segs)
    assert b"".join(segs) == data[: data.rfind(b"</page>") + 7]
    assert len(heads) == 1 and heads[0] == data[: data.find(b"<page>")]


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cook-dump-reader"]


def test_ahead_raises_the_threads_error_and_stops():
    closed = []

    def source():
        try:
            yield 1
            yield 2
            raise CookError("boom in the reader")
        finally:
            closed.append(True)

    got = []
    with pytest.raises(CookError, match="boom in the reader"):
        for x in dumpio.ahead(source()):
            got.append(x)
    assert got == [1, 2] and closed == [True] and not _reader_threads()


def test_ahead_stops_on_early_close_and_consumer_error():
    for how in ("close", "raise"):
        closed, produced = [], []

        def endless():
            try:
                n = 0
                while True:
                    produced.append(n)
                    yield n
                    n += 1
            finally:
                closed.append(True)

        with contextlib.closing(dumpio.ahead(endless(), depth=2)) as it:  # as iter_dump_tables holds it
            if how == "close":
                assert next(it) == 0
            else:
                with pytest.raises(ZeroDivisionError):
                    for x in it:
                        if x == 3:
                            1 / 0
        assert closed == [True] and not _reader_threads(), how
        assert len(produced) <= 8  # bounded: it never ran far ahead of the consumer


def test_early_close_or_error_of_a_real_read_leaves_nothing_running(files, tmp_path):
    """Stop reading a bz2 dump (decompressing on a thread, parsing in 2 processes) after one table, or let a
    page fail to parse in a worker while the reader thread is still busy: no thread or process is left."""
    for processes in (False, True):
        it = iter_dump_tables(files["single"], workers=2, processes=processes)
        table, stats = next(it)
        assert table.num_rows > 0
        it.close()
        assert not _reader_threads() and not multiprocessing.active_children(), processes
    data = bz2.decompress(files["single"].read_bytes())
    at = data.find(b"<page>")
    bad = b"<page><title>Bad</title><ns>0</ns><id>1</id><revision><id>2</id><text>&lol9;</text></revision></page>"
    path = tmp_path / "enwiki-bad-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(data[:at] + bad + data[at:], 1))
    for processes in (False, True):
        with pytest.raises(CookError, match="undefined XML entity reference &lol9"):
            for _ in iter_dump_tables(path, workers=2, processes=processes):
                pass
        assert not _reader_threads() and not multiprocessing.active_children(), processes


def test_every_decoder_gives_the_same_documents(files):
    ref = [d for t, s in iter_dump_tables(files["single"], use_ibz2=False) for d in t.to_pylist()]
    assert ref and ref == list(iter_dump_documents(files["xml"]))
    par = [d for t, s in iter_dump_tables(files["single"], workers=2, processes=True, decoder_threads=2)
           for d in t.to_pylist()]
    assert par == ref


# --- bz2 bombs: output is bounded per call, never decompressed whole --------------------------------


def _bomb(mb: int) -> bytes:
    """`mb` MB of one byte, bz2-compressed to a few hundred bytes (ratio ~10^5)."""
    c = bz2.BZ2Compressor(9)
    block = b"a" * (1 << 20)
    return b"".join(c.compress(block) for _ in range(mb)) + c.flush()


def test_bz2_bomb_is_decompressed_in_bounded_pieces(tmp_path):
    path = tmp_path / "bomb.xml.bz2"
    path.write_bytes(_bomb(40) + _bomb(1))  # two streams, the first one a bomb
    state = dumpio.ReadState()
    sizes = [len(c) for c in dumpio.decompressed_chunks(path, state, "bz2", threads=1)]
    assert max(sizes) <= dumpio.SEGMENT_BYTES, max(sizes)  # one call of the decoder: 40 MB at once before
    assert sum(sizes) == 41 << 20 and not state.truncated


def test_multistream_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "multi.xml.bz2"
    path.write_bytes(_bomb(2) + _bomb(3))
    data, complete = dumpio.decompress_streams(path.read_bytes())
    assert len(data) == 5 << 20 and complete
    with pytest.raises(CookError, match=r"decompress to over 4 MB"):
        dumpio.decompress_streams(path.read_bytes(), limit=4 << 20)
    monkeypatch.setattr(dumpio, "MAX_PAGE_BYTES", 4 << 20)  # the real bound is 256 MB: too slow to build here
    with pytest.raises(CookError) as e:  # a worker's item names the file and its byte range
        dumpio.read_streams(path, 0, path.stat().st_size)
    assert str(e.value).startswith(f"{path}: bytes 0-") and "\n" not in str(e.value)
