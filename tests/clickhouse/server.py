#!/usr/bin/env python3
"""A ClickHouse HTTP endpoint over the real ClickHouse engine embedded in chdb-core.

Debian's clickhouse-server (18.16) cannot run orderguard's schema, and no other ClickHouse can be
installed here, so the tests use the engine from PyPI (chdb-core, in-process) behind this small
server. It speaks the subset of the ClickHouse HTTP interface that the `clickhouse` Rust crate
uses with its default settings (LZ4 and schema validation on):

* ``GET|HEAD /ping`` -> ``Ok.``
* ``POST /?query=INSERT INTO t(cols) FORMAT RowBinary[WithNamesAndTypes]`` with the rows in the
  body; with ``decompress=1`` the body is in ClickHouse's compressed block framing (16-byte
  CityHash128 checksum, method 0x82 = LZ4, compressed and decompressed sizes), which is checked
  and unpacked here. The rows are loaded with ``INSERT ... SELECT * FROM file(...)``: chdb's
  streaming insert drops a block that violates a CHECK constraint without raising, where a real
  server refuses the insert (code 469); ``INSERT ... SELECT`` raises as ClickHouse does.
* ``POST /`` with the query in the body (or ``query`` in the URL, or a multipart form carrying
  ``query`` and ``param_*``); the output format is the query's ``FORMAT`` clause, else
  ``default_format``, else TabSeparated. Responses are not compressed (allowed: the crate reads
  a response without ``Content-Encoding`` as plain).
* ``database``, ``param_*`` and every other URL parameter (a setting, e.g.
  ``insert_deduplication_token``) are honoured for that request.
* Errors answer 500 (404 for unknown tables/databases, 400 for syntax errors) with the header
  ``X-ClickHouse-Exception-Code`` and the body ``Code: N. DB::Exception: ...``.

Test hooks (not part of ClickHouse): ``POST /__fail?status=503&count=N`` makes the next N
requests fail with that status before reaching the engine; ``POST /__fail?delay_ms=D&count=N``
makes them wait D ms first (a slow server). ``POST /__drop_ack?count=N`` lets the next N
INSERTs commit and then cuts the connection without an answer (a lost acknowledgement).

Usage: ``server.py --data DIR [--port PORT]``; prints ``LISTENING <port>`` once ready.
"""

import argparse
import email.parser
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import chdb
import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

ENGINE_LOCK = threading.Lock()
FAULTS = {"status": 0, "count": 0, "delay_ms": 0}
DROP_ACKS = {"count": 0}
NOT_SETTINGS = {
    "query", "database", "default_format", "decompress", "compress", "role", "session_id",
    "query_id", "user", "password", "enable_http_compression",
}
INSERT_RE = re.compile(r"^\s*(INSERT\s+INTO\s+.*?)\s+FORMAT\s+(\w+)\s*$", re.I | re.S)
HEAD_RE = re.compile(r"^\s*INSERT\s+INTO\s+([`\w.]+)\s*(?:\((.*)\))?\s*$", re.I | re.S)
FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
CODE_RE = re.compile(r"Code:\s*(\d+)")


def decompress_blocks(body: bytes) -> bytes:
    """Unpacks ClickHouse compressed blocks, verifying each block's checksum."""
    out, pos = bytearray(), 0
    while pos < len(body):
        checksum = body[pos:pos + 16]
        header = body[pos + 16:pos + 25]
        if len(header) < 9:
            raise ValueError("truncated compressed block header")
        method = header[0]
        compressed_size = int.from_bytes(header[1:5], "little")  # includes the 9 header bytes
        size = int.from_bytes(header[5:9], "little")
        block = body[pos + 16:pos + 16 + compressed_size]
        # CityHash128 v1.0.2 as ClickHouse stores it: the high 64 bits first, each half
        # little-endian (this package returns the hash as one 128-bit integer).
        digest = CityHash128(block)
        expected = (digest >> 64).to_bytes(8, "little") + (digest & (2**64 - 1)).to_bytes(8, "little")
        if checksum != expected:
            raise ValueError("checksum mismatch in compressed block")
        if method != 0x82:
            raise ValueError(f"unsupported compression method 0x{method:02x}")
        out += lz4.block.decompress(block[9:], uncompressed_size=size)
        pos += 16 + compressed_size
    return bytes(out)


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "orderguard-chdb"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def reply(self, status: int, body: bytes, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def fail(self, message: str, status: int = 500):
        match = CODE_RE.search(message)
        code = match.group(1) if match else "1000"
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}"
        if status == 500 and ("UNKNOWN_TABLE" in message or "UNKNOWN_DATABASE" in message):
            status = 404
        elif status == 500 and "SYNTAX_ERROR" in message:
            status = 400
        self.reply(status, (message.rstrip() + "\n").encode(),
                   {"X-ClickHouse-Exception-Code": code, "Content-Type": "text/plain; charset=UTF-8"})

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/ping":
            return self.reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        return self.handle_query(b"")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if url.path == "/__fail":
            args = dict(urllib.parse.parse_qsl(url.query))
            FAULTS.update(status=int(args.get("status", 0 if "delay_ms" in args else 503)),
                          count=int(args.get("count", 1)), delay_ms=int(args.get("delay_ms", 0)))
            return self.reply(200, b"ok\n")
        if url.path == "/__drop_ack":
            args = dict(urllib.parse.parse_qsl(url.query))
            DROP_ACKS.update(count=int(args.get("count", 1)))
            return self.reply(200, b"ok\n")
        return self.handle_query(body)

    def handle_query(self, body: bytes):
        with ENGINE_LOCK:
            fault = dict(FAULTS) if FAULTS["count"] > 0 else None
            if fault:
                FAULTS["count"] -= 1
        if fault:
            time.sleep(fault["delay_ms"] / 1000)
            if fault["status"]:
                return self.fail("injected fault (test hook)", fault["status"])
        url = urllib.parse.urlsplit(self.path)
        args = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
            for part in message.get_payload():
                args[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode()
            body = b""
        params = {k[len("param_"):]: v for k, v in args.items() if k.startswith("param_")}
        settings = {k: v for k, v in args.items() if k not in NOT_SETTINGS and not k.startswith("param_")}
        try:
            if args.get("decompress") == "1" and body:
                body = decompress_blocks(body)
        except ValueError as error:
            return self.fail(f"Code: 432. DB::Exception: {error}. (UNKNOWN_CODEC)", 400)

        url_query = args.get("query", "")
        insert = INSERT_RE.match(url_query) if url_query else None
        sql = url_query if insert else (url_query + ("\n" if url_query and body else "") + body.decode("utf-8", "replace"))
        with ENGINE_LOCK:
            conn = self.server.conn
            applied = []
            try:
                if args.get("database"):
                    conn.query(f"USE `{args['database']}`")
                for name, value in settings.items():
                    conn.query(f"SET {name} = {quote(value)}")
                    applied.append(name)
                if insert:
                    self.insert_rows(conn, insert.group(1), insert.group(2), body)
                    result = b""
                    out_format = "RowBinary"
                    if DROP_ACKS["count"] > 0:
                        # Committed; the answer is lost with the connection.
                        DROP_ACKS["count"] -= 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                else:
                    match = FORMAT_RE.search(sql)
                    out_format = match.group(1) if match else args.get("default_format", "TabSeparated")
                    if match:
                        sql = sql[:match.start()]
                    res = conn.query(sql, out_format, params=params)
                    result = res.bytes() if hasattr(res, "bytes") else (res or b"")
                    if isinstance(result, str):
                        result = result.encode()
            except Exception as error:  # every engine error becomes a ClickHouse-style error
                return self.fail(str(error))
            finally:
                for name in applied:
                    try:
                        conn.query(f"SET {name} = DEFAULT")
                    except Exception:
                        pass
                if args.get("database"):
                    conn.query("USE default")
        self.reply(200, result, {"X-ClickHouse-Format": out_format,
                                 "Content-Type": "application/octet-stream"})


    def insert_rows(self, conn, head: str, data_format: str, body: bytes):
        """Loads `body` (in `data_format`) into the table named by `head` via a file."""
        if not body:
            return
        match = HEAD_RE.match(head)
        if not match:
            raise ValueError(f"Code: 62. DB::Exception: cannot parse INSERT head {head!r}. (SYNTAX_ERROR)")
        table, columns = match.group(1), match.group(2)
        path = os.path.join(self.server.spool, f"insert-{threading.get_ident()}-{time.monotonic_ns()}.bin")
        with open(path, "wb") as spool:
            spool.write(body)
        try:
            source = f"file({quote(path)}, {quote(data_format)}"
            if not data_format.lower().endswith("withnamesandtypes"):
                source += ", " + quote(self.structure(conn, table, columns))
            source += ")"
            target = f"{table} ({columns})" if columns else table
            conn.query(f"INSERT INTO {target} SELECT * FROM {source}")
        finally:
            os.remove(path)

    @staticmethod
    def structure(conn, table: str, columns) -> str:
        """`name Type, ...` of the listed columns (all when none are listed)."""
        described = conn.query(f"DESCRIBE TABLE {table}", "JSONEachRow").bytes().decode()
        types = {}
        for line in described.splitlines():
            row = json.loads(line)
            types[row["name"]] = row["type"]
        names = [c.strip().strip("`") for c in columns.split(",")] if columns else list(types)
        return ", ".join(f"`{name}` {types[name]}" for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory for the engine's data")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", options.port), Handler)
    server.daemon_threads = True
    server.conn = chdb.connect(options.data)
    server.spool = os.path.join(options.data, "spool")
    os.makedirs(server.spool, exist_ok=True)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
