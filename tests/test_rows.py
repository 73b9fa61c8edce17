"""Rows of a memory-mapped matrix read by preadv: the same values as indexing the mapping."""

from __future__ import annotations

import os

import numpy as np
import pytest

from retrieval.rows import read_block, take_rows


@pytest.fixture
def mapped(tmp_path):
    x = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float16)
    np.save(tmp_path / "rows.npy", x)
    return x, np.load(tmp_path / "rows.npy", mmap_mode="r")


def test_take_rows_reads_the_rows_asked_for_in_their_order(mapped):
    x, rows = mapped
    asked = [999, 0, 17, 17, 500]
    got = take_rows(rows, asked)
    assert type(got) is np.ndarray and got.dtype == np.float16
    np.testing.assert_array_equal(got, x[asked])
    assert take_rows(rows, []).shape == (0, 24)


def test_read_block_reads_a_range_clipped_to_the_matrix(mapped):
    x, rows = mapped
    np.testing.assert_array_equal(read_block(rows, 990, 1100), x[990:])
    np.testing.assert_array_equal(read_block(rows, 0, 3), x[:3])


def test_a_row_outside_the_matrix_is_refused_not_counted_from_the_end(mapped):
    _, rows = mapped
    with pytest.raises(IndexError, match="out of range 0..999"):
        take_rows(rows, [3, -1])
    with pytest.raises(IndexError):
        take_rows(rows, [1000])


def test_slices_and_in_memory_arrays_are_indexed_as_usual(mapped):
    x, rows = mapped
    part = rows[100:200]  # a memmap view whose offset attribute is its parent's
    np.testing.assert_array_equal(take_rows(part, [0, 99]), x[[100, 199]])
    np.testing.assert_array_equal(read_block(part, 10, 12), x[110:112])
    np.testing.assert_array_equal(take_rows(x, [5, 6]), x[[5, 6]])


def test_an_empty_block_and_a_transposed_mapping(mapped):
    x, rows = mapped
    assert read_block(rows, 500, 500).shape == (0, 24) and read_block(rows, 700, 600).shape == (0, 24)
    flipped = rows.T  # a memmap, 2-D, not C-ordered: indexed through the mapping
    assert isinstance(flipped, np.memmap) and not flipped.flags.c_contiguous
    np.testing.assert_array_equal(take_rows(flipped, [0, 23]), x.T[[0, 23]])
    np.testing.assert_array_equal(read_block(flipped, 2, 4), x.T[2:4])


def test_a_file_cut_short_under_the_mapping_is_an_error_not_a_hang(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "rows.npy", x)
    rows = np.load(tmp_path / "rows.npy", mmap_mode="r")
    path = tmp_path / "rows.npy"
    from retrieval import rows as rows_module  # the reading loop itself: a file cut short after loading

    source = rows_module._source(rows)
    assert (str(source[0]), source[1:]) == (str(path), (rows.offset, 16))
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = memoryview(bytearray(32))
        with pytest.raises(OSError, match=r"^the feature file ended early at byte \d+$"):
            rows_module._read_exactly(fd, buffer, path.stat().st_size - 16)  # 16 bytes left of the 32 asked
        part = memoryview(bytearray(8))
        rows_module._read_exactly(fd, part, rows.offset + 4 * 16)
        assert np.frombuffer(part, np.float32).tolist() == [16.0, 17.0]
    finally:
        os.close(fd)


def test_whole_mappings_that_are_not_matrices_are_indexed_as_usual(tmp_path):
    # C-ordered memmaps of a whole file, 1-D and 3-D: not (n, d) matrices, so read through the mapping
    for shape in ((30,), (6, 4, 3)):
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        np.save(tmp_path / "other.npy", x)
        mapped = np.load(tmp_path / "other.npy", mmap_mode="r")
        assert mapped.flags.c_contiguous and mapped.ndim != 2
        np.testing.assert_array_equal(take_rows(mapped, [5, 0, 5]), x[[5, 0, 5]])
        np.testing.assert_array_equal(read_block(mapped, 1, 4), x[1:4])
        del mapped


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_held_file_is_read_after_its_path_names_a_new_file(tmp_path):
    # An index folder replaced under a loaded index: rows read by offset come from the file mapped.
    import gc
    import pickle

    from retrieval.rows import OpenFile, hold_file

    path = tmp_path / "rows.npy"
    old = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(path, old)
    held = hold_file(np.load(path, mmap_mode="r"))
    plain = np.load(path, mmap_mode="r")
    np.save(tmp_path / "next.npy", -old)
    os.replace(tmp_path / "next.npy", path)
    for _ in range(2):  # the held descriptor stays open between reads
        np.testing.assert_array_equal(take_rows(held, [5, 0]), old[[5, 0]])
        np.testing.assert_array_equal(read_block(held, 1, 3), old[1:3])
    os.fstat(held.held_file.fd)  # still open after the reads
    np.testing.assert_array_equal(take_rows(plain, [5]), -old[[5]])  # not held: the path's new file
    before = _open_fds()
    take_rows(plain, [1, 2]), read_block(plain, 0, 6)
    assert _open_fds() == before  # a file opened for one read is closed again
    f = OpenFile(path)
    assert f.read(2, 6) == path.read_bytes()[2:6] and f.size() == path.stat().st_size and f.path == path
    again = pickle.loads(pickle.dumps(f))
    assert again.fd != f.fd and again.read(0, 6) == f.read(0, 6)
    fd = f.fd
    del f
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its object
