# Boot identity (docs/protocol.md §1). Seqs are the flash log's business (flash_log.py: it
# recovers next_seq from its segments and never reuses one across reboots).
#
# Two values name a boot:
# - boot_nonce, u32, drawn from the board's random source at every boot and never stored:
#   Control Point requests and responses are tagged with it, so nothing captured in another
#   boot is accepted in this one, and losing a file cannot bring an old value back.
# - boot_id, u16, the short boot number frames and the status record carry (ticks restart
#   at every boot: it tells the gateway which SET_TIME anchor a tick belongs to). The last
#   one + 1, from the file `boot_id`; a random start when that file is lost or unreadable.
#   settle() then moves it off every boot the flash log still holds records or gaps of, so
#   two boots' ticks never share a number while both are on the patch.


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


def random_u32(random_bytes):
    b = random_bytes(4)
    if len(b) != 4:
        raise ValueError("random source returned %d bytes, not 4" % len(b))
    return b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24


class BootState:
    def __init__(self, data_dir, random_bytes):
        """random_bytes(n): n bytes from the board's random source (os.urandom on a board)."""
        self._boot_path = data_dir + "/boot_id"
        self.boot_nonce = random_u32(random_bytes)
        last = _read_int(self._boot_path, -1)
        if 0 <= last <= 0xFFFF:
            self.boot_id = (last + 1) & 0xFFFF
        else:   # lost: the old number is unknowable, start anywhere
            self.boot_id = self.boot_nonce & 0xFFFF
        _write_int(self._boot_path, self.boot_id)
        # Seq floor left by earlier firmware that kept samples in RAM and reserved seqs
        # in blocks in the file `seq_floor`: the flash log starts at or above it, so a patch
        # updated from that firmware does not reuse a seq the gateway already holds. Read
        # only; 0 on a patch that never ran it.
        self.seq_floor = _read_int(data_dir + "/seq_floor", 0)
        # The first seq this boot hands out: the log's owner sets it once the log is open.
        self.first_seq = self.seq_floor

    def settle(self, boots_held):
        """Move boot_id past every boot number in boots_held (the flash log's); return it."""
        start = self.boot_id
        while self.boot_id in boots_held:
            self.boot_id = (self.boot_id + 1) & 0xFFFF
            if self.boot_id == start:
                raise ValueError("every boot number is held")
        if self.boot_id != start:
            _write_int(self._boot_path, self.boot_id)
        return self.boot_id
