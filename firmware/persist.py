# Small persistent counters: the boot id. Seqs are the flash log's business (flash_log.py: it
# recovers next_seq from its segments and never reuses one across reboots).


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
        self.boot_id = (_read_int(self._boot_path, -1) + 1) & 0xFFFF
        _write_int(self._boot_path, self.boot_id)
        # Seq floor left by earlier firmware that kept samples in RAM and reserved seqs
        # in blocks in the file `seq_floor`: the flash log starts at or above it, so a patch
        # updated from that firmware does not reuse a seq the gateway already holds. Read
        # only; 0 on a patch that never ran it.
        self.seq_floor = _read_int(data_dir + "/seq_floor", 0)
        # The first seq this boot hands out: the log's owner sets it once the log is open.
        self.first_seq = self.seq_floor
