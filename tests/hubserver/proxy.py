"""An HTTP proxy that counts the requests reaching a Hub server and can damage one file.

The tests put it in front of olah to see what a pull asks of the server (one log line per
request) and to make a download go wrong in the two ways a network does:

- ``--truncate NAME``: a GET of ``.../resolve/<rev>/NAME`` announces the full Content-Length,
  sends half of the body and drops the connection (an interrupted download).
- ``--corrupt NAME``: the same GET answers a body of the right length with one byte changed
  (content that does not match what was published).

Standard library only; run as a script::

    python proxy.py --upstream http://127.0.0.1:PORT --port-file FILE [--log FILE] [--truncate NAME | --corrupt NAME]
"""

import argparse
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: str = None
    log_path: Path = None
    truncate: str = None
    corrupt: str = None

    def log_message(self, format, *args):
        pass

    def _forward(self):
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"{self.command} {self.path}\n")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
        target = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            status, reply_headers = response.status, response.getheaders()
        finally:
            connection.close()

        is_file_get = self.command == "GET" and "/resolve/" in self.path
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if is_file_get and name == self.corrupt and content:
            middle = len(content) // 2
            content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]

        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        if self.command == "HEAD":
            # HEAD answers carry the size of the body a GET would send.
            announced = dict((k.lower(), v) for k, v in reply_headers).get("content-length")
            self.send_header("Content-Length", announced or "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if is_file_get and name == self.truncate:
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(content)

    do_GET = do_HEAD = do_POST = _forward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the Hub server")
    parser.add_argument("--port-file", required=True, help="written with the port once listening")
    parser.add_argument("--log", help="append one 'METHOD path' line per request here")
    faults = parser.add_mutually_exclusive_group()
    faults.add_argument("--truncate", metavar="NAME", help="cut every download of this file in half")
    faults.add_argument("--corrupt", metavar="NAME", help="flip one byte in every download of this file")
    args = parser.parse_args(argv)

    ProxyHandler.upstream = args.upstream
    ProxyHandler.log_path = Path(args.log) if args.log else None
    ProxyHandler.truncate = args.truncate
    ProxyHandler.corrupt = args.corrupt
    server = ThreadingHTTPServer(("127.0.0.1", 0), ProxyHandler)
    port_file = Path(args.port_file)
    port_file.with_suffix(".tmp").write_text(str(server.server_address[1]))
    port_file.with_suffix(".tmp").rename(port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
