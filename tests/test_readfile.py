"""gputext.readfile: a file read from outside never blocks and is never read without bound."""

import os

import pytest

from gputext.readfile import MAX_KERNEL_COUNT, NotARegularFile, TooLarge, kernel_count, read_bounded, read_bounded_text


def test_reads_a_regular_file_whole(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000 + b"\xc3\xa9")
    assert read_bounded(path, 5002) == b"x" * 5000 + b"\xc3\xa9"
    assert read_bounded_text(path, 5002).endswith("x\u00e9")


def test_a_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"y" * 101)
    with pytest.raises(TooLarge):
        read_bounded(path, 100)


def test_a_fifo_does_not_block_open_and_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a plain open() would wait for one forever
    with pytest.raises(NotARegularFile):
        read_bounded(fifo, 100)


@pytest.mark.parametrize("target", ["/dev/zero", "directory"])
def test_a_link_to_a_device_or_a_directory_is_refused(tmp_path, target):
    link = tmp_path / "link"
    link.symlink_to(tmp_path if target == "directory" else target)
    with pytest.raises((NotARegularFile, IsADirectoryError)):
        read_bounded(link, 100)


def test_an_os_error_stays_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 100)
    with pytest.raises(OSError) as err:
        read_bounded(tmp_path / ("n" * 300), 100)
    assert not isinstance(err.value, ValueError)


def test_a_proc_file_of_unknown_size_is_read_whole():
    assert read_bounded("/proc/self/stat", 64 * 1024).startswith(str(os.getpid()).encode() + b" (")


def test_a_kernel_count_is_ascii_digits_up_to_64_bits():
    assert kernel_count(b"0") == 0 and kernel_count(b"18446744073709551615") == MAX_KERNEL_COUNT == 2 ** 64 - 1
    for field in (b"18446744073709551616", b"99999999999999999999", b"1" * 21, b"", b"-1", b"+1", b"1 ",
                  "\u0661".encode()):
        with pytest.raises(ValueError):
            kernel_count(field)
