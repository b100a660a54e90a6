"""Input discovery, day inference and record-aligned byte ranges."""
from __future__ import annotations

import gzip

import pytest

from recpipe.ingest.options import IngestError, IngestOptions
from recpipe.ingest.sources import WorkUnit, expand_inputs, group_by_day, iter_line_chunks, plan_units

from ._data import criteo_lines, write_lines


def _read_all(units, chunk):
    out = []
    for u in units:
        for off, data in iter_line_chunks(u, chunk, skip_header=False):
            text = data.decode()
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
            pos = off
            for ln in lines:
                out.append((pos, ln))
                pos += len(ln.encode()) + 1
    return out


@pytest.mark.parametrize("split,chunk", [(1, 7), (37, 5), (100, 1000), (10_000, 64)])
def test_ranges_cover_every_line_once(tmp_path, split, chunk):
    lines = criteo_lines(25, seed=1)
    lines[3] = ""  # an empty line is still a line (it will be dead-lettered later)
    path = write_lines(tmp_path / "2024-01-01.tsv", lines)
    units = plan_units([path], ["c"], IngestOptions(split_bytes=split))
    assert len(units) >= 1 and units[0].start == 0
    got = _read_all(units, chunk)
    raw = open(path, "rb").read()
    want, pos = [], 0
    for ln in lines:  # independent reference: offsets of each line in the file
        want.append((pos, ln))
        pos += len(ln.encode()) + 1
    assert got == want
    assert all(raw[o: o + len(ln.encode())].decode() == ln for o, ln in got)


def test_last_line_without_newline_and_gzip(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes(b"a\tb\nc\td")
    assert _read_all(plan_units([str(p)], ["c"], IngestOptions(split_bytes=3)), 2) == [(0, "a\tb"), (4, "c\td")]
    g = tmp_path / "2024-01-02.tsv.gz"
    g.write_bytes(gzip.compress(b"1\t2\n3\t4\n"))
    units = plan_units([str(g)], ["c"], IngestOptions(split_bytes=1))
    assert len(units) == 1
    assert _read_all(units, 3) == [(0, "1\t2"), (4, "3\t4")]


def test_header_skipped_only_in_first_range(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("y,x\n1,2\n0,3\n")
    units = plan_units([str(p)], [], IngestOptions(input_format="csv", split_bytes=5))
    assert units[0].columns == ("y", "x")
    got = [(o, d) for u in units for o, d in iter_line_chunks(u, 100, skip_header=True)]
    assert b"".join(d for _, d in got) == b"1,2\n0,3\n" and got[0][0] == 4


def test_expand_and_group_by_day(tmp_path):
    a = write_lines(tmp_path / "raw" / "2024-01-02.tsv", ["x"])
    b = write_lines(tmp_path / "raw" / "2024-01-01.tsv.gz", ["x"])
    write_lines(tmp_path / "raw" / "manifest.json", ["{}"])
    files = expand_inputs([str(tmp_path / "raw")])
    assert files == sorted([a, b])
    assert group_by_day(files, None) == {"2024-01-01": [b], "2024-01-02": [a]}
    assert group_by_day(files, "2024-03-03") == {"2024-03-03": files}
    with pytest.raises(IngestError, match="no files matched"):
        expand_inputs([str(tmp_path / "nothing*")])
    with pytest.raises(IngestError, match="cannot infer the day"):
        group_by_day([str(tmp_path / "data.tsv")], None)
    with pytest.raises(IngestError, match="YYYY-MM-DD"):
        group_by_day(files, "yesterday")


def test_work_unit_is_plain_tuple():
    u = WorkUnit("p", 0, 10, ("a",))
    assert tuple(u) == ("p", 0, 10, ("a",))
