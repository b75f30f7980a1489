#!/usr/bin/env python3
"""A reader of the cinfer image format, version 1, written from docs/FORMAT.md alone.

It shares no code with cinfer (Rust): HKDF is done here with the standard library's HMAC (RFC 5869), AES-256-GCM-SIV
(RFC 8452) comes from Python `cryptography` (OpenSSL). It makes the reader checks of FORMAT.md §8 in order, opens
every chunk of every file and prints the image as JSON on stdout:

    {"root", "image_id", "chunk_size", "chunk_count", "key_id",
     "entries": [{"path" (hex of the bytes, components joined with "/"), "kind" ("dir" | "file" | "symlink"),
                  "mode", "mtime", "mtime_nsec", and for a file "size", "sha256", "content" (hex); for a symlink
                  "target" (hex)}],
     "extensions": [{"type", "critical", "len"}]}

A refused image prints `refused: <reason>` on stderr and exits 2.

Usage: format_v1_reader.py IMAGE MODEL_KEY_HEX [EXPECTED_ROOT_HEX]
"""

import hashlib
import hmac
import json
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

HEADER_LEN = 4096
MAGIC = bytes([0x43, 0x49, 0x4E, 0x46, 0x49, 0x4D, 0x47, 0x01])
TAG_LEN = 16


class Refused(Exception):
    pass


def refuse(reason):
    raise Refused(reason)


def hkdf_sha256(salt, ikm, info, length):
    """RFC 5869: extract, then expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def parse_header(h):
    """§3 and §8 step 1 (the fields a header alone decides)."""
    if h[0:8] != MAGIC:
        refuse("bad magic")
    version, flags, header_used, aead, kdf, chunk_size = struct.unpack_from("<HHIHHI", h, 8)
    if version != 1:
        refuse(f"version {version}")
    if flags != 0:
        refuse(f"flags {flags:#x}")
    if aead != 1:
        refuse(f"aead {aead}")
    if kdf != 1:
        refuse(f"kdf {kdf}")
    if chunk_size & (chunk_size - 1) or not 4096 <= chunk_size <= 16 << 20:
        refuse(f"chunk size {chunk_size}")
    chunk_count, index_offset, index_len = struct.unpack_from("<QQQ", h, 88)
    (key_id_len,) = struct.unpack_from("<H", h, 112)
    if key_id_len > 1024:
        refuse(f"key id length {key_id_len}")
    if header_used != 114 + key_id_len:
        refuse(f"header_used {header_used}")
    try:
        key_id = h[114 : 114 + key_id_len].decode("utf-8")
    except UnicodeDecodeError:
        refuse("key id is not UTF-8")
    if any(h[114 + key_id_len :]):
        refuse("non-zero header padding")
    if index_offset < HEADER_LEN:
        refuse(f"index offset {index_offset}")
    if index_len < TAG_LEN:
        refuse(f"index length {index_len}")
    if index_offset + index_len >= 1 << 64:
        refuse("index offset + length overflows")
    return {
        "chunk_size": chunk_size,
        "image_id": h[24:56],
        "key_check": h[56:88],
        "chunk_count": chunk_count,
        "index_offset": index_offset,
        "index_len": index_len,
        "key_id": key_id,
    }


class Cursor:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            refuse("index truncated")
        b = self.data[self.at : self.at + n]
        self.at += n
        return b

    def int(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]


KINDS = {1: "dir", 2: "file", 3: "symlink"}


def parse_index(data):
    """§6: the encoded index, with its tree rules. Returns (entries, extensions)."""
    c = Cursor(data)
    if c.int("I") != 1:
        refuse("index version")
    if c.int("I") != 0:
        refuse("index flags")
    count = c.int("Q")
    if count < 1:
        refuse("no entries")
    entries, names = [], set()
    for i in range(count):
        e = {"parent": c.int("Q"), "kind": KINDS.get(c.int("B"))}
        e["mode"], e["mtime"], e["mtime_nsec"] = c.int("I"), c.int("q"), c.int("I")
        e["name"] = c.take(c.int("H"))
        if e["kind"] is None:
            refuse(f"entry {i}: kind")
        if e["mode"] > 0o7777:
            refuse(f"entry {i}: mode")
        if e["mtime_nsec"] >= 10**9:
            refuse(f"entry {i}: mtime_nsec")
        if len(e["name"]) > 255:
            refuse(f"entry {i}: name length")
        if e["kind"] == "file":
            e["size"], e["sha256"] = c.int("Q"), c.take(32)
        elif e["kind"] == "symlink":
            e["target"] = c.take(c.int("H"))
            if not 1 <= len(e["target"]) <= 4095 or b"\0" in e["target"]:
                refuse(f"entry {i}: symlink target")
        if i == 0:
            if e["parent"] != 0 or e["kind"] != "dir" or e["name"] != b"":
                refuse("entry 0 is not the root directory")
        else:
            if e["parent"] >= i:
                refuse(f"entry {i}: parent {e['parent']} is not an earlier entry")
            if entries[e["parent"]]["kind"] != "dir":
                refuse(f"entry {i}: parent is not a directory")
            n = e["name"]
            if n in (b"", b".", b"..") or b"/" in n or b"\0" in n:
                refuse(f"entry {i}: name {n!r}")
            if (e["parent"], n) in names:
                refuse(f"entry {i}: duplicate name {n!r}")
            names.add((e["parent"], n))
        entries.append(e)
    extensions = []
    for _ in range(c.int("I")):
        ext = {"type": c.int("H"), "critical": c.int("B")}
        ext["len"] = c.int("I")
        c.take(ext["len"])
        if ext["critical"] not in (0, 1):
            refuse("extension critical flag")
        if ext["critical"] and ext["type"] != 1:
            refuse(f"unknown critical extension {ext['type']}")
        extensions.append(ext)
    if c.at != len(data):
        refuse("bytes after the last extension")
    return entries, extensions


def read_image(img, model_key, expected_root=None):
    if len(img) < HEADER_LEN:
        refuse("shorter than a header")
    header = img[:HEADER_LEN]
    h = parse_header(header)
    sealed_index = img[h["index_offset"] : h["index_offset"] + h["index_len"]]
    # §7; §8 step 2.
    root = hashlib.sha256(b"cinfer-image-v1 root\0" + header + sealed_index).digest()
    if expected_root is not None and root != expected_root:
        refuse("root digest mismatch")
    # §4; §8 step 3.
    image_id = h["image_id"]
    chunk_key = hkdf_sha256(image_id, model_key, b"cinfer-image-v1 chunk key", 32)
    index_key = hkdf_sha256(image_id, model_key, b"cinfer-image-v1 index key", 32)
    key_check = hkdf_sha256(image_id, model_key, b"cinfer-image-v1 key check", 32)
    if not hmac.compare_digest(key_check, h["key_check"]):
        refuse("wrong key")
    # §6; §8 steps 4 and 5.
    try:
        encoded = AESGCMSIV(index_key).decrypt(bytes(12), sealed_index, b"cinfer-image-v1 index\0" + header)
    except InvalidTag:
        refuse("index authentication failed")
    entries, extensions = parse_index(encoded)
    # §5 placement; §8 steps 6 and 7.
    cs, start, chunk, placed = h["chunk_size"], HEADER_LEN, 0, []
    for e in entries:
        if e["kind"] == "file":
            n = -(-e["size"] // cs)
            placed.append((e, start, chunk, n))
            start += n * TAG_LEN + e["size"]
            chunk += n
    if chunk != h["chunk_count"]:
        refuse(f"chunk count {h['chunk_count']}, the index implies {chunk}")
    if start != h["index_offset"]:
        refuse(f"index offset {h['index_offset']}, the index implies {start}")
    if len(img) != h["index_offset"] + h["index_len"]:
        refuse("image length mismatch")
    # §5; §8 step 8: every chunk of every file.
    aead = AESGCMSIV(chunk_key)
    for e, start, first, n in placed:
        plain = bytearray()
        for k in range(n):
            g = first + k
            at = start + k * (cs + TAG_LEN)
            sealed = img[at : at + min(cs, e["size"] - k * cs) + TAG_LEN]
            nonce = struct.pack("<Q", g) + bytes(4)
            aad = b"cinfer-image-v1 chunk\0" + image_id + struct.pack("<Q", g)
            try:
                plain += aead.decrypt(nonce, sealed, aad)
            except InvalidTag:
                refuse(f"chunk {g} failed authentication")
        if hashlib.sha256(plain).digest() != e["sha256"]:
            refuse("a file's content does not match its index sha256")
        e["content"] = bytes(plain)
    paths = []
    for e in entries:
        paths.append(b"" if not paths else (paths[e["parent"]] + b"/" if e["parent"] else b"") + e["name"])
    out = []
    for path, e in zip(paths, entries):
        o = {"path": path.hex(), "kind": e["kind"], "mode": e["mode"], "mtime": e["mtime"]}
        o["mtime_nsec"] = e["mtime_nsec"]
        if e["kind"] == "file":
            o.update(size=e["size"], sha256=e["sha256"].hex(), content=e["content"].hex())
        elif e["kind"] == "symlink":
            o["target"] = e["target"].hex()
        out.append(o)
    return {
        "root": root.hex(),
        "image_id": image_id.hex(),
        "chunk_size": cs,
        "chunk_count": h["chunk_count"],
        "key_id": h["key_id"],
        "entries": out,
        "extensions": extensions,
    }


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[-1])
    with open(sys.argv[1], "rb") as f:
        img = f.read()
    key = bytes.fromhex(sys.argv[2])
    if len(key) != 32:
        sys.exit("the model key is 32 bytes")
    root = bytes.fromhex(sys.argv[3]) if len(sys.argv) == 4 else None
    try:
        image = read_image(img, key, root)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        sys.exit(2)
    json.dump(image, sys.stdout)


if __name__ == "__main__":
    main()
