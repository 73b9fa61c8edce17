"""A small Hub-compatible HTTP server that accepts uploads into local git repositories.

No open Hub server accepts uploads without a database and an object store, so the tests use
this one for the write side. It implements the few routes that huggingface_hub's
``create_repo``, ``create_branch``, ``create_tag``, ``list_repo_files``, ``repo_info`` and
``create_commit`` call, and commits into bare git repositories laid out as
``<mirrors>/<type>s/<org>/<name>``: the same layout olah serves in its local-mirror mode, so a
push through this server can be pulled back through olah.

Every file is answered ``uploadMode: "regular"`` at preupload, so commits carry file contents
inline (base64 in the ndjson commit payload) and no LFS or Xet transfer is involved.

Standard library only; run as a script::

    python upload_server.py --mirrors DIR --port-file FILE [--log FILE] [--token TOKEN]

It binds 127.0.0.1 on a free port and writes that port to ``--port-file`` once it listens.
"""

import argparse
import base64
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# What huggingface.co writes as the first commit of a new repository.
INITIAL_GITATTRIBUTES = b"*.npy filter=lfs diff=lfs merge=lfs -text\n"

_REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")


class HubError(Exception):
    """An error answered to the client the way the Hub does (status, X-Error-Code, message)."""

    def __init__(self, status, message, code=None, extra=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}


class GitRepos:
    """Bare git repositories under one mirrors folder, changed only through ``git`` commands."""

    def __init__(self, mirrors):
        self.mirrors = Path(mirrors)
        # One writer at a time: commits read a branch tip and then move it.
        self.lock = threading.Lock()

    def path(self, repo_type, org, name):
        return self.mirrors / repo_type / org / name

    def git(self, repo, *args, stdin=None, env=None):
        result = subprocess.run(
            ["git", "--git-dir", str(repo), *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, **(env or {}), "GIT_AUTHOR_NAME": "upload-server",
                 "GIT_AUTHOR_EMAIL": "upload@localhost", "GIT_COMMITTER_NAME": "upload-server",
                 "GIT_COMMITTER_EMAIL": "upload@localhost"},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def existing(self, repo_type, org, name):
        repo = self.path(repo_type, org, name)
        if not (repo / "HEAD").is_file():
            raise HubError(404, f"Repository {org}/{name} not found", "RepoNotFound")
        return repo

    def resolve(self, repo, revision):
        """Commit sha of a branch, tag or commit, or a RevisionNotFound error."""
        try:
            return self.git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
        except RuntimeError:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None

    def branch_tip(self, repo, branch):
        try:
            return self.git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").decode().strip()
        except RuntimeError:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound") from None

    def files(self, repo, commit):
        """(path, blob sha, size) of every file in a commit."""
        out = self.git(repo, "ls-tree", "-r", "-l", "-z", commit).decode()
        entries = []
        for line in filter(None, out.split("\0")):
            meta, path = line.split("\t", 1)
            _mode, _kind, sha, size = meta.split()
            entries.append((path, sha, int(size)))
        return entries

    def create(self, repo_type, org, name):
        repo = self.path(repo_type, org, name)
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)], check=True)
        self.commit(repo, "main", None, [("file", ".gitattributes", INITIAL_GITATTRIBUTES)], "initial commit")
        return repo

    def commit(self, repo, branch, parent, operations, message):
        """Commit ``operations`` ((kind, path, bytes|None)) on top of ``parent`` and move the branch."""
        index_file = repo / f"index-{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index_file)}
        try:
            if parent is not None:
                self.git(repo, "read-tree", parent, env=env)
            else:
                self.git(repo, "read-tree", "--empty", env=env)
            # --index-info works without a work tree (these repositories are bare); mode 0 removes a path.
            lines = []
            for kind, path, content in operations:
                if kind == "file":
                    sha = self.git(repo, "hash-object", "-w", "--stdin", stdin=content).decode().strip()
                    lines.append(f"100644 {sha}\t{path}")
                elif kind == "deletedFile":
                    lines.append(f"0 {'0' * 40}\t{path}")
            if lines:
                self.git(repo, "update-index", "--index-info", stdin="\n".join(lines).encode() + b"\n", env=env)
            tree = self.git(repo, "write-tree", env=env).decode().strip()
        finally:
            index_file.unlink(missing_ok=True)
        parents = ["-p", parent] if parent is not None else []
        commit = self.git(repo, "commit-tree", tree, *parents, "-m", message).decode().strip()
        # Compare-and-swap: refuses if the branch moved since ``parent`` was read.
        self.git(repo, "update-ref", f"refs/heads/{branch}", commit, parent or "")
        return commit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    repos: GitRepos = None
    token: str = None
    log_path: Path = None

    def log_message(self, format, *args):
        pass

    def _record(self):
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"{self.command} {self.path}\n")

    def _send(self, status, payload=None, headers=None):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def _base_url(self):
        return f"http://{self.headers.get('Host')}"

    def _check_token(self):
        if self.token is None:
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401, "Invalid username or password.")

    def _dispatch(self, method):
        self._record()
        try:
            url = urlsplit(self.path)
            status, payload = self.route(method, url.path, parse_qs(url.query))
            self._send(status, payload)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code is not None:
                headers["X-Error-Code"] = error.code
            self._send(error.status, {"error": error.message, **error.extra}, headers)
        except Exception as error:  # a test server must answer, never hang the client
            self._send(500, {"error": f"{type(error).__name__}: {error}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def route(self, method, path, query):
        if method == "POST" and path == "/api/repos/create":
            self._check_token()
            return self.create_repo(json.loads(self._body()))
        if method == "POST" and path == "/api/validate-yaml":
            return self.validate_yaml(json.loads(self._body()))
        match = _REPO_ROUTE.match(path)
        if match is None:
            raise HubError(404, f"Not found: {path}")
        repo_type, org, name, rest = match.groups()
        rest = rest or ""
        repo = self.repos.existing(repo_type, org, name)
        action, _, tail = rest.partition("/")
        tail = unquote(tail)
        if method == "GET" and action in ("", "revision"):
            return self.repo_info(repo, org, name, tail or "main")
        if method == "GET" and action == "tree":
            revision, _, subpath = tail.partition("/")
            return self.tree(repo, revision, subpath)
        if method == "POST":
            self._check_token()
            body = self._body()
            with self.repos.lock:
                if action == "preupload":
                    return self.preupload(repo, tail, json.loads(body))
                if action == "commit":
                    return self.commit(repo, repo_type, org, name, tail, body)
                if action == "branch":
                    return self.create_branch(repo, tail, json.loads(body or b"{}"))
                if action == "tag":
                    return self.create_tag(repo, tail, json.loads(body or b"{}"))
        raise HubError(404, f"Not found: {method} {path}")

    def create_repo(self, payload):
        type_dir = f"{payload.get('type') or 'model'}s"
        org, name = payload.get("organization"), payload["name"]
        if not org:
            raise HubError(400, "This test server needs an organization: use 'org/name' repo ids")
        prefix = "" if type_dir == "models" else f"{type_dir}/"
        url = f"{self._base_url()}/{prefix}{org}/{name}"
        if (self.repos.path(type_dir, org, name) / "HEAD").is_file():
            # The Hub answers a repeated create with 409 and the repo's url.
            raise HubError(409, "You already created this repo", extra={"url": url})
        self.repos.create(type_dir, org, name)
        return 200, {"url": url, "name": f"{org}/{name}"}

    def validate_yaml(self, payload):
        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": f"invalid YAML: {error}"}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "YAML metadata must be a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def repo_info(self, repo, org, name, revision):
        sha = self.repos.resolve(repo, revision)
        siblings = [{"rfilename": path} for path, _, _ in self.repos.files(repo, sha)]
        return 200, {"id": f"{org}/{name}", "_id": sha, "author": org, "sha": sha, "private": False,
                     "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
                     "siblings": siblings}

    def tree(self, repo, revision, subpath):
        sha = self.repos.resolve(repo, revision)
        subpath = subpath.strip("/")
        entries = [{"type": "file", "oid": blob, "size": size, "path": path}
                   for path, blob, size in self.repos.files(repo, sha)
                   if not subpath or path.startswith(subpath + "/")]
        return 200, entries

    def preupload(self, repo, revision, payload):
        sha = self.repos.resolve(repo, revision)
        remote = {path: blob for path, blob, _ in self.repos.files(repo, sha)}
        files = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": remote.get(item["path"])} for item in payload["files"]]
        return 200, {"files": files, "commitOid": sha}

    def commit(self, repo, repo_type, org, name, branch, body):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        parent = self.repos.branch_tip(repo, branch)
        if header.get("parentCommit") and header["parentCommit"] != parent:
            raise HubError(412, "A commit has happened since parentCommit. Please retry.")
        operations = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                operations.append(("file", value["path"], base64.b64decode(value["content"])))
            elif line["key"] == "deletedFile":
                operations.append((line["key"], value["path"], None))
            else:
                raise HubError(400, f"This test server does not accept '{line['key']}' operations")
        message = header["summary"] + ("\n\n" + header["description"] if header.get("description") else "")
        sha = self.repos.commit(repo, branch, parent, operations, message)
        prefix = "" if repo_type == "models" else f"{repo_type}/"
        return 200, {"success": True, "commitOid": sha,
                     "commitUrl": f"{self._base_url()}/{prefix}{org}/{name}/commit/{sha}"}

    def create_branch(self, repo, branch, payload):
        if (repo / "refs" / "heads" / branch).exists():
            raise HubError(409, f"Branch {branch} already exists")
        start = self.repos.resolve(repo, payload.get("startingPoint") or "main")
        self.repos.git(repo, "update-ref", f"refs/heads/{branch}", start, "")
        return 200, {}

    def create_tag(self, repo, revision, payload):
        tag = payload["tag"]
        if self.repos.git(repo, "tag", "--list", tag).strip():
            raise HubError(409, f"Tag {tag} already exists")
        sha = self.repos.resolve(repo, revision)
        self.repos.git(repo, "tag", tag, sha)
        return 200, {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", required=True, help="folder holding <type>s/<org>/<name> git repos")
    parser.add_argument("--port-file", required=True, help="written with the port once listening")
    parser.add_argument("--log", help="append one 'METHOD path' line per request here")
    parser.add_argument("--token", help="if set, write routes require 'Authorization: Bearer TOKEN'")
    args = parser.parse_args(argv)

    Handler.repos = GitRepos(args.mirrors)
    Handler.token = args.token
    Handler.log_path = Path(args.log) if args.log else None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file = Path(args.port_file)
    # Written then renamed, so a reader never sees a half-written port.
    port_file.with_suffix(".tmp").write_text(str(server.server_address[1]))
    port_file.with_suffix(".tmp").rename(port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
