# Small persistent counters: boot id and the seq floor that keeps seqs unique across reboots.
# The seq floor is written ahead in blocks, so a reboot skips at most SEQ_BLOCK seqs and never
# reuses one, at one flash write per SEQ_BLOCK samples.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x

SEQ_BLOCK = const(1024)


def _read_int(path, default):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def _write_int(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(value))
    import os
    os.rename(tmp, path)


class BootState:
    def __init__(self, data_dir):
        self._boot_path = data_dir + "/boot_id"
        self._seq_path = data_dir + "/seq_floor"
        self.boot_id = (_read_int(self._boot_path, -1) + 1) & 0xFFFF
        _write_int(self._boot_path, self.boot_id)
        self.first_seq = _read_int(self._seq_path, 0)
        self._seq_reserved = self.first_seq + SEQ_BLOCK
        _write_int(self._seq_path, self._seq_reserved)

    def reserve(self, next_seq):
        # Call after each append; writes only when a new block is entered.
        if next_seq >= self._seq_reserved:
            self._seq_reserved = next_seq + SEQ_BLOCK
            _write_int(self._seq_path, self._seq_reserved)
