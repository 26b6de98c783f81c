"""A Hugging Face Hub on 127.0.0.1 for tests: the endpoints that the unmodified `huggingface_hub` client uses to
create repos and branches, commit (regular files inline, large files through the LFS batch API) and download.

Repos live in memory as git-like commits (40-hex ids, a parent, a file table) on named branches; file contents live
in a folder. Large files are answered by `resolve` with a redirect to a second listener, as the real Hub redirects
to its CDN, so the client takes their metadata from `X-Linked-Etag`/`X-Linked-Size` on the redirect.
Not collected by pytest (no `test_` prefix); `conftest.py` wraps it in a fixture.
"""

import base64
import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
LFS_BATCH = ["info", "lfs", "objects", "batch"]
LFS_SIZE = 10 * 1024 * 1024  # the Hub stores files from 10 MB up in LFS whatever .gitattributes says
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npz", "*.onnx", "*.pkl", "*.pt", "*.pth")
    + ("*.safetensors", "*.tar", "*.zip", "*tfevents*")
).encode()


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob, which the Hub sends as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class HubError(Exception):
    """An HTTP error answer: status, message (JSON `error` and `X-Error-Message`) and optional `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra


@dataclass(frozen=True)
class Entry:
    """One file of a commit: its git blob id and size; large files also carry their LFS sha256."""

    blob_id: str
    size: int
    lfs_oid: str | None = None

    def as_json(self, path: str) -> dict:
        item = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_oid:
            item["lfs"] = {"oid": self.lfs_oid, "size": self.size, "pointerSize": len(lfs_pointer(self.lfs_oid, 0))}
        return item


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> Commit:
        """A branch name or a full commit id; anything else is the Hub's RevisionNotFound."""
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Hub:
    """The state and the routes; `HubServer` puts it on two sockets (API and CDN)."""

    def __init__(self, root: Path, user: str, forbidden_namespaces: tuple[str, ...]):
        self.root, self.user, self.forbidden = Path(root), user, set(forbidden_namespaces)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.url = self.cdn_url = ""
        self.log: list[tuple[str, str, int]] = []
        self.unrouted: list[str] = []

    def _no_route(self, method: str, path: str) -> HubError:
        """Requests this Hub does not implement are recorded, so tests can assert the client used none."""
        self.unrouted.append(f"{method} {path}")
        return HubError(404, f"No route for {method} {path}")

    # storage -------------------------------------------------------------------------------------------------------
    def _store(self, content: bytes) -> Entry:
        blob_id = git_blob_id(content)
        (self.root / "objects" / blob_id).write_bytes(content)
        return Entry(blob_id, len(content))

    def _lfs_path(self, oid: str) -> Path:
        if len(oid) != 64 or not all(c in "0123456789abcdef" for c in oid):
            raise HubError(400, f"Invalid LFS oid {oid!r}")
        return self.root / "lfs" / oid

    def read(self, entry: Entry) -> bytes:
        if entry.lfs_oid:
            return self._lfs_path(entry.lfs_oid).read_bytes()
        return (self.root / "objects" / entry.blob_id).read_bytes()

    def _commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, Entry]) -> Commit:
        seed = json.dumps([parent, title, time.time_ns(), sorted((p, e.blob_id) for p, e in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, files, _now())
        repo.commits[commit.oid] = commit
        return commit

    # access --------------------------------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not token):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _check_write(self, namespace: str, token: str | None, what: str = "model") -> None:
        if not token:
            raise HubError(401, "You must be authenticated to do this")
        if namespace in self.forbidden:
            raise HubError(403, f'You don\'t have the rights to create a {what} under the namespace "{namespace}"')

    # routes --------------------------------------------------------------------------------------------------------
    def route(self, method: str, parts: list[str], query: dict, headers, body: bytes, cdn: bool):
        """Dispatch on the path; returns (status, headers, body, body length for HEAD)."""
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if cdn:
            if method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "lfs-objects":
                path = self._lfs_path(parts[1])
                if not path.exists():
                    raise HubError(404, "Object not found")
                return self._file_answer(path.read_bytes(), {}, headers)
            raise self._no_route(method, "/" + "/".join(parts))
        if parts[:1] == ["api"]:
            return self._api(method, parts[1:], query, body, token)
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-upload":
            return self._lfs_upload(parts[1], body)
        if method == "POST" and parts == ["lfs-verify"]:
            request = json.loads(body)
            path = self._lfs_path(request["oid"])
            if not path.exists() or path.stat().st_size != request["size"]:
                raise HubError(404, f"LFS object {request['oid']} was not uploaded")
            return self._json({"success": True})
        repo_type = "model"
        if parts[:1] == ["datasets"]:
            repo_type, parts = "dataset", parts[1:]
        if method == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == LFS_BATCH:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1].removesuffix('.git')}", body, token)
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), headers, token)
        raise self._no_route(method, "/" + "/".join(parts))

    def _api(self, method: str, parts: list[str], query: dict, body: bytes, token: str | None):
        if parts == ["whoami-v2"] and method == "GET":
            if not token:
                raise HubError(401, "Invalid credentials in Authorization header")
            return self._json(
                {
                    "type": "user",
                    "name": self.user,
                    "fullname": "Test User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
                }
            )
        if parts == ["agent-harnesses"] and method == "GET":  # huggingface_hub's user-agent registry
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if parts == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body)["content"])
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body), token)
        if len(parts) < 3 or parts[0] not in REPO_TYPES:
            raise self._no_route(method, "/api/" + "/".join(parts))
        repo_type, repo_id, rest = REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
        with self.lock:
            repo = self._repo(repo_type, repo_id, token)
            if method == "GET" and not rest:
                return self._info(repo, repo.resolve("main"))
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._info(repo, repo.resolve(rest[1]))
            if method == "GET" and rest == ["refs"]:
                return self._json({"branches": self._branches(repo), "tags": [], "converts": []})
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo.resolve(rest[1]), "/".join(rest[2:]), query)
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                paths = parse_qs(body.decode()).get("paths", [])
                return self._paths_info(repo.resolve(rest[1]), paths)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                self._check_write(repo_id.split("/")[0], token, repo_type)
                return self._preupload(repo.resolve(rest[1]), json.loads(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                self._check_write(repo_id.split("/")[0], token, repo_type)
                return self._create_commit(repo, rest[1], body, query)
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                self._check_write(repo_id.split("/")[0], token, repo_type)
                return self._create_branch(repo, rest[1], json.loads(body or b"{}"))
        raise self._no_route(method, "/api/" + "/".join(parts))

    def _create_repo(self, request: dict, token: str | None):
        repo_type = request.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Unsupported repo type {repo_type!r}")
        namespace = request.get("organization") or self.user
        self._check_write(namespace, token, repo_type)
        repo_id = f"{namespace}/{request['name']}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            private = request.get("visibility") == "private" or bool(request.get("private"))
            repo = Repo(repo_type, repo_id, private, _now())
            initial = self._commit(repo, None, "initial commit", {".gitattributes": self._store(GITATTRIBUTES)})
            repo.branches["main"] = initial.oid
            self.repos[(repo_type, repo_id)] = repo
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo: Repo, commit: Commit):
        return self._json(
            {
                "_id": hashlib.sha1(repo.url_path.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "createdAt": repo.created,
                "lastModified": commit.date,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        )

    def _branches(self, repo: Repo) -> list[dict]:
        return [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in repo.branches.items()]

    def _tree(self, commit: Commit, folder: str, query: dict):
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        items = self._listing(commit, folder, recursive)
        if items is None:
            raise HubError(404, f"{folder} does not exist on {commit.oid}", "EntryNotFound")
        return self._json(items)

    def _listing(self, commit: Commit, folder: str, recursive: bool) -> list[dict] | None:
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        files, folders = [], set()
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                files.append(entry.as_json(path))
        if prefix and not files and not folders:
            return None
        tree_ids = {p: hashlib.sha1(f"tree {commit.oid} {p}".encode()).hexdigest() for p in folders}
        return [{"type": "directory", "oid": tree_ids[p], "size": 0, "path": p} for p in sorted(folders)] + files

    def _paths_info(self, commit: Commit, paths: list[str]):
        items = []
        for path in paths:
            if path in commit.files:
                items.append(commit.files[path].as_json(path))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                oid = hashlib.sha1(f"tree {commit.oid} {path}".encode()).hexdigest()
                items.append({"type": "directory", "oid": oid, "size": 0, "path": path})
        return self._json(items)

    def _preupload(self, commit: Commit, request: dict):
        lfs_patterns = (
            [
                line.split()[0]
                for line in self.read(commit.files[".gitattributes"]).decode().splitlines()
                if "lfs" in line
            ]
            if ".gitattributes" in commit.files
            else []
        )
        answers = []
        for item in request["files"]:
            path, size = item["path"], item["size"]
            sample = base64.b64decode(item["sample"])
            name = path.rsplit("/", 1)[-1]
            lfs = size >= LFS_SIZE or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in lfs_patterns)
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.lfs_oid or existing.blob_id)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._json({"files": answers, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes, token: str | None):
        with self.lock:
            self._repo(repo_type, repo_id, token)
        self._check_write(repo_id.split("/")[0], token, repo_type)
        request = json.loads(body)
        if request.get("operation") != "upload" or "basic" not in request.get("transfers", ["basic"]):
            raise HubError(400, "Only basic LFS uploads are supported here")
        objects = []
        for item in request["objects"]:
            answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if not self._lfs_path(item["oid"]).exists():
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{item['oid']}"},
                    "verify": {"href": f"{self.url}/lfs-verify"},
                }
            objects.append(answer)
        return self._json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, oid: str, body: bytes):
        path = self._lfs_path(oid)
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not hash to {oid}")
        path.write_bytes(body)
        return 200, {}, b"", 0

    def _create_commit(self, repo: Repo, branch: str, body: bytes, query: dict):
        if query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test Hub")
        if branch not in repo.branches:
            raise HubError(404, f"Branch {branch!r} does not exist", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header, head = lines[0]["value"], repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, f"A commit has happened since {header['parentCommit']}; the head is {head.oid}")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = self._store(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                path = self._lfs_path(value["oid"])
                if not path.exists():
                    raise HubError(422, f"LFS file {value['path']} ({value['oid']}) was not uploaded")
                pointer = lfs_pointer(value["oid"], path.stat().st_size)
                files[value["path"]] = Entry(git_blob_id(pointer), path.stat().st_size, value["oid"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self._commit(repo, head.oid, header["summary"], files)
        repo.branches[branch] = commit.oid
        url = f"{self.url}/{repo.url_path}/commit/{commit.oid}"
        return self._json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""})

    def _create_branch(self, repo: Repo, branch: str, request: dict):
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        if branch.startswith("refs/") or not branch:
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        repo.branches[branch] = repo.resolve(request.get("startingPoint") or "main").oid
        return self._json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, headers, token: str | None):
        with self.lock:
            commit = self._repo(repo_type, repo_id, token).resolve(revision)
        entry = commit.files.get(path)
        answer = {"X-Repo-Commit": commit.oid}
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", answer)
        if entry.lfs_oid:
            answer |= {
                "ETag": f'"{entry.blob_id}"',
                "X-Linked-Etag": f'"{entry.lfs_oid}"',
                "X-Linked-Size": str(entry.size),
                "Location": f"{self.cdn_url}/lfs-objects/{entry.lfs_oid}",
            }
            return 302, answer, b"", 0
        return self._file_answer(self.read(entry), answer | {"ETag": f'"{entry.blob_id}"'}, headers)

    def _file_answer(self, content: bytes, answer: dict, headers):
        """The file, or the byte range that a resumed download asks for."""
        answer = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **answer}
        wanted = headers.get("Range", "")
        if wanted.startswith("bytes=") and "," not in wanted:
            start_text, _, end_text = wanted[6:].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(content) - 1
            answer["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, answer, content[start : end + 1], end + 1 - start
        return 200, answer, content, len(content)

    def _validate_yaml(self, content: str):
        errors = []
        if content.startswith("---\n") and "\n---" in content[4:]:
            try:
                metadata = yaml.safe_load(content[4 : content.index("\n---", 4)])
            except yaml.YAMLError as error:
                metadata, errors = None, [f"Invalid YAML: {error}"]
            if not errors and not isinstance(metadata, dict):
                errors.append("The metadata must be a YAML mapping")
            elif isinstance(metadata, dict):
                errors += self._model_index_errors(metadata.get("model-index"))
        if errors:
            return self._json({"errors": [{"message": m} for m in errors]}, status=400)
        return self._json({"warnings": []})

    @staticmethod
    def _model_index_errors(model_index) -> list[str]:
        if model_index is None:
            return []
        if not isinstance(model_index, list):
            return ['"model-index" must be a list']
        errors = []
        for model in model_index:
            for result in model.get("results", []):
                if "type" not in result.get("task", {}) or "type" not in result.get("dataset", {}):
                    errors.append('"model-index[].results[]" needs task.type and dataset.type')
                if any("type" not in m or "value" not in m for m in result.get("metrics", [])):
                    errors.append('"model-index[].results[].metrics[]" needs type and value')
        return errors

    @staticmethod
    def _json(data, status: int = 200, content_type: str = "application/json"):
        body = json.dumps(data).encode()
        return status, {"Content-Type": content_type}, body, len(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self):
        self._answer("GET")

    def do_HEAD(self):
        self._answer("HEAD")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, method: str) -> None:
        hub: Hub = self.server.hub
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.split("/")[1:] if part]
        try:
            status, headers, body, length = hub.route(
                method, parts, parse_qs(url.query), self.headers, self._body(), self.server.cdn
            )
        except HubError as error:
            body = json.dumps({"error": error.message, **error.extra}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            status, length = error.status, len(body)
        hub.log.append((method, self.path, status))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: Hub, cdn: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.cdn = hub, cdn


class HubServer:
    """Start with `with HubServer(tmp) as hub:`; `hub.url` is the `HF_ENDPOINT`, `hub.env(home)` a client's env."""

    def __init__(self, root: Path, user: str = "tester", forbidden_namespaces: tuple[str, ...] = ("forbidden",)):
        self.hub = Hub(root, user, forbidden_namespaces)
        self._listeners: list[_Listener] = []

    @property
    def url(self) -> str:
        return self.hub.url

    @property
    def unrouted(self) -> list[str]:
        """Requests that matched no endpoint: empty when this Hub covered everything the client did."""
        return self.hub.unrouted

    @property
    def log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, to see what a client asked for."""
        return self.hub.log

    def env(self, home: Path) -> dict[str, str]:
        """What a client process needs: this endpoint, LFS uploads (no Xet), a token and its own cache."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": "hf_test_token",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(Path(home) / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }

    def __enter__(self) -> "HubServer":
        for cdn in (False, True):
            listener = _Listener(self.hub, cdn)
            threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._listeners.append(listener)
        api, cdn = (f"http://127.0.0.1:{listener.server_address[1]}" for listener in self._listeners)
        self.hub.url, self.hub.cdn_url = api, cdn
        return self

    def __exit__(self, *exc) -> None:
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
