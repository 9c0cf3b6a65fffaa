"""File log: torn tails, kill -9 mid-write, writer lock, segments, format check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zlib

import orjson
import pytest

from freshrec.errors import ConfigError, IncompatibleFormatError, InputError
from freshrec.stream import FileLog, FileLogConfig


def _segments(path):
    return sorted((path / "p0000").glob("*.seg"))


def test_torn_partial_frame_is_truncated_on_reopen(tmp_path):
    log = FileLog(tmp_path, FileLogConfig(fsync="never"))
    log.append([f"rec{i}".encode() for i in range(10)])
    log.close()
    seg = _segments(tmp_path)[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as f:  # a header promising 100 bytes, followed by only 3
        f.write((100).to_bytes(4, "little") + zlib.crc32(b"x" * 100).to_bytes(4, "little") + b"xyz")
    reader = FileLog(tmp_path)
    assert len(reader.read(0, 0, 100)) == 10  # readers see only complete records
    reader.close()
    log = FileLog(tmp_path)
    assert log.append([b"next"]) == [10]
    assert seg.stat().st_size == good + 8 + 4
    assert [r.value for r in log.read(0, 8, 10)] == [b"rec8", b"rec9", b"next"]
    log.close()


def test_bad_checksum_at_tail_is_truncated(tmp_path):
    log = FileLog(tmp_path)
    log.append([b"aaaa", b"bbbb", b"cccc"])
    log.close()
    seg = _segments(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # flip a bit of the last payload
    seg.write_bytes(bytes(data))
    log = FileLog(tmp_path)
    assert log.append([b"dddd"]) == [2]
    assert [r.value for r in log.read(0, 0)] == [b"aaaa", b"bbbb", b"dddd"]
    log.close()


def test_frames_carry_zlib_crc32_of_their_payload(tmp_path):
    """The frame format is ``<u32 length><u32 crc32><payload>`` with zlib's CRC-32 (logs of
    earlier versions stay readable; a different checksum would truncate them on open)."""
    payloads = [b"", b"a", os.urandom(70_000), b"{}" * 999]
    log = FileLog(tmp_path, FileLogConfig(fsync="never"))
    log.append(payloads)
    log.close()
    data, i = _segments(tmp_path)[-1].read_bytes(), 0
    for p in payloads:
        n = int.from_bytes(data[i:i + 4], "little")
        crc = int.from_bytes(data[i + 4:i + 8], "little")
        assert (n, crc, data[i + 8:i + 8 + n]) == (len(p), zlib.crc32(p), p)
        i += 8 + n
    # a segment framed here by hand with zlib is read back whole
    with open(_segments(tmp_path)[-1], "ab") as f:
        f.write(len(b"hand").to_bytes(4, "little") + zlib.crc32(b"hand").to_bytes(4, "little")
                + b"hand")
    reader = FileLog(tmp_path)
    assert [r.value for r in reader.read(0, 0, 10)] == payloads + [b"hand"]
    reader.close()


_WRITER = textwrap.dedent("""
    import sys
    from freshrec.stream import FileLog, FileLogConfig
    log = FileLog(sys.argv[1], FileLogConfig(segment_bytes=1 << 16, fsync="never"))
    start = log.end_offset(0)
    i = start
    while True:
        batch = [(f"{i + k}:" + "x" * (200 + (i + k) % 900)).encode() for k in range(50)]
        offs = log.append(batch)
        i += 50
        sys.stdout.write(f"{offs[-1]}\\n")
        sys.stdout.flush()
""")


@pytest.mark.slow
def test_kill_9_mid_write_keeps_every_acknowledged_record(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    logdir = tmp_path / "log"
    acked = -1
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(logdir)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for lines, line in enumerate(proc.stdout, 1):
            acked = max(acked, int(line))
            if lines >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)  # most likely in the middle of a write
        proc.wait()
        proc.stdout.close()
        log = FileLog(logdir)
        recs = log.read(0, 0, 10**7)
        assert len(recs) >= acked + 1
        for r in recs:
            idx, body = r.value.decode().split(":")
            assert int(idx) == r.offset
            assert body == "x" * (200 + r.offset % 900)
        log.append([f"{len(recs)}:".encode() + b"x" * (200 + len(recs) % 900)])  # writable
        acked = len(recs)
        log.close()
    assert len(_segments(logdir)) > 1


def test_second_writer_is_refused(tmp_path):
    a = FileLog(tmp_path)
    a.append([b"x"])
    b = FileLog(tmp_path)
    with pytest.raises(ConfigError, match="another process is writing"):
        b.append([b"y"])
    a.close()
    b.append([b"y"])  # the lock is free again
    assert [r.value for r in b.read(0, 0)] == [b"x", b"y"]
    b.close()


def test_reads_cross_segments_and_reopen_keeps_partitions(tmp_path):
    log = FileLog(tmp_path, FileLogConfig(partitions=2, segment_bytes=1024))
    recs = [os.urandom(37 + i % 50) for i in range(500)]
    for i in range(0, 500, 25):
        log.append(recs[i:i + 25], partition=1)
    log.close()
    assert len(list((tmp_path / "p0001").glob("*.seg"))) > 5
    log = FileLog(tmp_path, FileLogConfig(partitions=7))  # existing log keeps its 2
    assert log.partitions == 2
    assert [r.value for r in log.read(1, 0, 10**6)] == recs
    assert [r.value for r in log.read(1, 333, 3)] == recs[333:336]
    log.close()


def test_format_version_mismatch_is_refused(tmp_path):
    FileLog(tmp_path).close()
    meta = orjson.loads((tmp_path / "log.json").read_bytes())
    meta["format_version"] = 99
    (tmp_path / "log.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(IncompatibleFormatError, match="v99"):
        FileLog(tmp_path)


def test_fsync_always_policy_appends(tmp_path):
    log = FileLog(tmp_path, FileLogConfig(fsync="always"))
    assert log.append([b"a", b"b"]) == [0, 1]
    log.close()


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from freshrec.stream import FileLog, FileLogConfig
    log = FileLog(sys.argv[1], FileLogConfig(fsync="never"))
    log.append([b"r%d" % i * 100 for i in range(10)])
    seg = sorted(__import__("pathlib").Path(sys.argv[1], "p0000").glob("*.seg"))[-1]
    before = seg.stat().st_size
    # the file size limit stops the write part-way, as a full disk does (EFBIG, not a kill)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (before + 1500, hard))
    try:
        log.append([b"x" * 1000 for _ in range(5)])
    except OSError as e:
        print("error:", type(e).__name__, e)
    print("size after the failed append:", seg.stat().st_size - before)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print("offsets:", log.append([b"after0", b"after1", b"after2"]))
    log.close()
""")


def test_a_failed_append_leaves_the_log_as_before_it(tmp_path):
    """A write that stops part-way (disk full; here the file size limit) leaves nothing of
    its append: a torn frame left in the middle hid every later record from readers and was
    truncated with them when a writer next opened the log. The error names the log, the
    partition and the records, and the next append goes on from the same offset."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (f"error: LogWriteError [Errno 27] file log {tmp_path}: appending 5 records "
            f"(5040 bytes) to partition 0 failed: File too large; none of them was written"
            ) in out.stdout
    assert "size after the failed append: 0" in out.stdout
    assert "offsets: [10, 11, 12]" in out.stdout
    reader = FileLog(tmp_path)
    assert [r.value for r in reader.read(0, 0, 100)] == (
        [b"r%d" % i * 100 for i in range(10)] + [b"after0", b"after1", b"after2"])
    reader.close()
    writer = FileLog(tmp_path)  # a writer opening it finds nothing to truncate
    assert writer.append([b"next"]) == [13]
    writer.close()


@pytest.mark.parametrize("content", [b"", b"{\"offset\": 3", b"[3]", b'{"offset": "3"}',
                                     b'{"offset": -1}', b'{"off": 3}'])
def test_a_damaged_consumer_group_position_is_an_error_naming_its_file(tmp_path, content):
    log = FileLog(tmp_path)
    log.append([b"a", b"b", b"c"])
    log.commit("g", 0, 2)
    assert log.committed("g", 0) == 2
    path = tmp_path / "groups" / "g.p0000.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"consumer group 'g' in partition 0 \\({path}\\) is "
                                         f"not .*damaged"):
        log.committed("g", 0)
    path.unlink()
    assert log.committed("g", 0) == 0
    log.close()
