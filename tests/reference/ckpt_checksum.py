"""The checkpoint checksums of docs/checkpoints.md, computed independently of pcmoe (h5py and hashlib's
BLAKE2b): every dataset's attribute `blake2b` is the BLAKE2b-256 (hex) of its path, a NUL, its shape (uint64
little-endian per dimension), the BLAKE2b-256 of each 1 MiB chunk of its bytes as stored (the last one
shorter) and, when it has one, its `steps` attribute (int32 little-endian); /meta's is that of "format_version=V\\nstep=S\\nparty=P\\nn_parties=N\\nlocal_rank=L\\n
mode=M\\nschedule=C\\nconfig=" followed by the config text.

    ckpt_checksum.py check FILE...   every checksum of each file recomputed and compared; prints the count
    ckpt_checksum.py seal FILE...    every checksum rewritten to match the file's contents (tests that change
                                     a checkpoint on purpose, to reach the checks behind the checksums)
"""
import hashlib
import struct
import sys

import h5py
import numpy as np

CHUNK = 1 << 20


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def dataset_checksum(path, d):
    h = hashlib.blake2b(digest_size=32)
    h.update(path.encode() + b"\0")
    for n in d.shape:
        h.update(struct.pack("<Q", n))
    data = np.ascontiguousarray(d[()]).astype(d.dtype.newbyteorder("<")).tobytes()
    for i in range(0, len(data), CHUNK):
        h.update(hashlib.blake2b(data[i:i + CHUNK], digest_size=32).digest())
    if "steps" in d.attrs:
        h.update(struct.pack("<i", int(d.attrs["steps"])))
    return h.hexdigest()


def meta_checksum(m):
    local = int(m["local_rank"]) if "local_rank" in m else 0
    head = "format_version=%d\nstep=%d\nparty=%d\nn_parties=%d\nlocal_rank=%d\nmode=%s\nschedule=%s\nconfig=" % (
        int(m["format_version"]), int(m["step"]), int(m["party"]), int(m["n_parties"]), local, text(m["mode"]),
        text(m["schedule"]))
    return hashlib.blake2b((head + text(m["config"])).encode(), digest_size=32).hexdigest()


def checksums(f):
    """(object, stored attribute or None, recomputed) for /meta and every dataset of an open file"""
    out = [(f["meta"], f["meta"].attrs.get("blake2b"), meta_checksum(f["meta"].attrs))]
    f.visititems(lambda name, o: out.append((o, o.attrs.get("blake2b"), dataset_checksum("/" + name, o)))
                 if isinstance(o, h5py.Dataset) else None)
    return out


def main():
    cmd, files = sys.argv[1], sys.argv[2:]
    for path in files:
        with h5py.File(path, "r+" if cmd == "seal" else "r") as f:
            sums = checksums(f)
            for obj, stored, want in sums:
                if cmd == "seal":
                    obj.attrs.create("blake2b", np.bytes_(want.encode()), dtype=h5py.string_dtype("ascii", 65))
                elif stored is None or text(stored) != want:
                    sys.exit("%s: %s: stored %s, recomputed %s" % (path, obj.name, stored and text(stored), want))
            print("%s: %d checksums %s" % (path, len(sums), "sealed" if cmd == "seal" else "match"))


if __name__ == "__main__":
    main()
