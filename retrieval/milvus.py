"""Milvus as a search backend: an index published into a collection, and searched through it.

A collection holds one row per image: its id (the primary key, the image id of the index), its
descriptor as stored in the index (L2-normalised, after whitening and DBA) and a digest of that
descriptor, so that a second publication rewrites only what changed. Its properties record the
descriptor space (network, weights, pipeline, DBA, whitening, dimension) and the publication's
revision, which `index.json` records too: an app refuses a collection that does not match its
index. The same code talks to Milvus Lite (a local `.db` path, no server), to a Milvus server or
cluster (`http://host:19530`) and to a managed Milvus (a URI and a token).

Search (`MilvusRows.search`) asks the collection's ANN index for `rerank` candidates with their
vectors (`output_fields`), then scores them exactly, as `retrieval.ann` does with FAISS: scores
are true inner products and the top k is exact whenever it is among the candidates. The
candidates' vectors stay in a small cache, where query expansion and the query-time diffusion
graph (`retrieval.diffusion.CandidateDiffusion`) read them: the serving machine holds no feature matrix.

Nothing here reads the environment or prints; the token is passed in and never stored, logged
or put in a message.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from retrieval.rows import RowSource, read_block
from retrieval.search import SearchUnavailable, as_rows

ID_FIELD = "id"
VECTOR_FIELD = "vector"
DIGEST_FIELD = "digest"
ID_MAX_LENGTH = 1024
IDENTITY_PROPERTY = "landmark_search.identity"
REVISION_PROPERTY = "landmark_search.revision"
INDEX_PROPERTY = "landmark_search.index"
METRIC = "IP"
# Rows sent in one insert: about 16 MB of float32, well under gRPC's 64 MB message limit.
BATCH_BYTES = 16 << 20
# Seconds one call may take before the backend counts as unreachable.
TIMEOUT_S = 10.0
# Searches read with bounded staleness: a published collection does not change while it is served, and
# "Strong" (the collection's level, which publishing needs) waits for the server's next time tick,
# 200 ms a search on the standalone server (measured: 200 ms for 20 results, without vectors).
SEARCH_CONSISTENCY = "Bounded"
# Seconds a publication waits for the server to finish building the index of what it wrote.
INDEX_WAIT_S = 1800.0
# Candidate vectors kept for query expansion and diffusion (4,096 x 1,280 float32 = 21 MB).
CACHE_ROWS = 4096
# The index type, chosen by measurement (docs/milvus.md, "Index type"): IVF_SQ8, the same 8-bit
# codes as the FAISS default, with about 2 sqrt(n) lists; 128 lists visited and 256 candidates
# re-scored exactly, as `retrieval.ann` does.
INDEX_TYPES = ("IVF_SQ8", "IVF_FLAT", "HNSW", "FLAT")
DEFAULT_INDEX_TYPE = "IVF_SQ8"
DEFAULT_NPROBE = 128
DEFAULT_EF = 256
DEFAULT_RERANK = 256


class MilvusError(RuntimeError):
    """Milvus refused or failed an operation, with what and why (never the token)."""


class CollectionMismatch(ValueError):
    """A collection that does not hold this index's descriptors, with what differs."""


def safe_uri(uri: str) -> str:
    """Returns `uri` without credentials or query string, for messages and logs."""
    parts = urlsplit(str(uri))
    if not parts.scheme or not parts.netloc:
        return str(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_local(uri: str) -> bool:
    """Tells whether `uri` names a Milvus Lite database (a local path ending in .db)."""
    return not urlsplit(str(uri)).netloc and str(uri).endswith(".db")


def connect(uri: str, *, token: str | None = None, timeout: float = TIMEOUT_S):
    """Returns a `pymilvus.MilvusClient` connected to `uri` (a local .db path starts Milvus Lite).

    Raises:
        MilvusError: when Milvus cannot be reached there, naming the URI without the token.
    """
    from pymilvus import MilvusClient

    kwargs = {"uri": str(uri), "timeout": timeout}
    if token:
        kwargs["token"] = token
    try:
        return MilvusClient(**kwargs)
    except (*_failures(), OSError, ValueError) as e:
        raise MilvusError(f"cannot reach Milvus at {safe_uri(uri)}: {_reason(e, token)}") from None


def _failures() -> tuple[type[Exception], ...]:
    """The exceptions a call to Milvus raises when it fails: pymilvus's own, and gRPC's that it
    lets through (a deadline passed while a restarted server comes back)."""
    import grpc
    from pymilvus.exceptions import MilvusException

    return MilvusException, grpc.RpcError


def _reason(error: Exception, token: str | None = None) -> str:
    """Returns the one-line gist of a pymilvus error, with the token blanked out if it appears."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    if callable(text):  # gRPC errors carry their status and details as methods
        text = f"{error.code().name}: {error.details()}"
    text = " ".join(str(text).split())
    return text.replace(token, "***") if token else text


# ---------------------------------------------------------------- what a collection holds


def identity_of(meta: dict) -> dict:
    """Returns what decides an index's descriptor space, from its index.json: two indexes whose
    identities differ cannot share a collection."""
    return {
        "network": meta["network"],
        "weights": meta["weights"],
        "pipeline": meta["pipeline"],
        "dba": meta.get("dba"),
        "whitening": bool(meta.get("whitening")),
        "dim": int(meta["dim"]),
    }


def row_digests(rows: np.ndarray) -> np.ndarray:
    """Returns (n,) int64: a 64-bit digest of each row's float32 bytes (what a republication compares)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i] = np.frombuffer(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), dtype="<i8")[0]
    return out


def index_params(index_type: str, n: int) -> tuple[dict, dict]:
    """Returns (build params, search params) of `index_type` for a collection of about n rows.

    IVF types get about 2 sqrt(n) lists (a power of two, 1 to 4,096, at least 39 rows each, as
    Milvus's k-means asks) and visit DEFAULT_NPROBE of them; HNSW links 16 neighbours a node
    and searches with ef = DEFAULT_EF.

    Raises:
        ValueError: for an index type this backend does not offer.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown Milvus index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if index_type == "HNSW":
        return {"M": 16, "efConstruction": 200}, {"ef": DEFAULT_EF}
    if index_type == "FLAT":
        return {}, {}
    lists = 2 ** round(math.log2(max(1.0, min(4096.0, 2 * math.sqrt(max(n, 1))))))
    while lists > 1 and lists * 39 > n:
        lists //= 2
    return {"nlist": lists}, {"nprobe": min(DEFAULT_NPROBE, lists)}


@dataclass
class PublishReport:
    """What a publication did: rows added, rewritten (changed descriptors), removed, kept, and the
    record written into index.json under "milvus"."""

    added: int
    changed: int
    removed: int
    kept: int
    seconds: float
    record: dict


def _create_collection(client, name: str, meta: dict, index_type: str, n: int, revision: str) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=int(meta["dim"]))
    schema.add_field(DIGEST_FIELD, DataType.INT64)
    build, _ = index_params(index_type, n)
    params = client.prepare_index_params()
    # Nested under "params", as older clients sent them: Milvus servers read both forms, Milvus Lite only this one.
    params.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type=METRIC, params={"params": build})
    # The build parameters as a property too: Milvus Lite's describe_index does not return them.
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong",
                             properties={IDENTITY_PROPERTY: json.dumps(identity_of(meta), sort_keys=True),
                                         REVISION_PROPERTY: revision,
                                         INDEX_PROPERTY: json.dumps({"index_type": index_type, "params": build})})


def collection_properties(client, name: str) -> dict:
    """Returns the collection's properties as a dict of strings."""
    props = client.describe_collection(name).get("properties") or {}
    if isinstance(props, list):  # some servers answer key/value pairs
        props = {p["key"]: p["value"] for p in props}
    return dict(props)


def _stored_identity(client, name: str) -> dict | None:
    raw = collection_properties(client, name).get(IDENTITY_PROPERTY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def check_identity(client, name: str, meta: dict) -> None:
    """Refuses a collection that holds another descriptor space than the index of `meta`.

    Raises:
        CollectionMismatch: naming the first entry that differs (dimension, network, ...).
    """
    stored = _stored_identity(client, name)
    if stored is None:
        raise CollectionMismatch(f"collection {name!r} was not published from an index "
                                 f"(it has no {IDENTITY_PROPERTY} property)")
    ours = identity_of(meta)
    for key in ("dim", "network", "weights", "pipeline", "dba", "whitening"):
        if stored.get(key) != ours[key]:
            raise CollectionMismatch(f"collection {name!r} holds descriptors of {key} {stored.get(key)!r}, "
                                     f"the index {ours[key]!r}")


def count_rows(client, name: str) -> int:
    """Returns the collection's row count, deletions applied."""
    result = client.query(name, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def stored_digests(client, name: str, *, batch: int = 10_000) -> dict[str, int]:
    """Returns {id: digest} of every row of the collection, read with a query iterator."""
    out = {}
    iterator = client.query_iterator(name, batch_size=batch, output_fields=[ID_FIELD, DIGEST_FIELD])
    try:
        while True:
            rows = iterator.next()
            if not rows:
                break
            out.update((str(r[ID_FIELD]), int(r[DIGEST_FIELD])) for r in rows)
    finally:
        iterator.close()
    return out


def publish_rows(
    client,
    name: str,
    features: np.ndarray,
    ids,
    meta: dict,
    *,
    index_type: str = DEFAULT_INDEX_TYPE,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PublishReport:
    """Publishes (n, d) index rows into collection `name`, incrementally; returns what it did.

    A new collection is created with `index_type` (see `index_params`). An existing one must hold
    the same descriptor space (`check_identity`); then only rows whose id is new or whose
    descriptor changed (DBA moves the rows near an added image) are written, and rows whose id is
    gone are deleted. Rows are written in batches of about BATCH_BYTES, `progress(done, total)`
    after each.

    Args:
        features: (n, d) L2-normalised rows as the index stores them (memory-mapped is fine).
        ids: n unique image ids, at most ID_MAX_LENGTH characters.
        meta: the index's index.json (network, weights, pipeline, dba, whitening, dim).
        replace: drop an existing collection of that name first, whatever it holds.

    Raises:
        CollectionMismatch: the collection exists and holds other descriptors (without `replace`).
        ValueError: an id too long, a bad index type, rows and ids of different lengths.
        MilvusError: Milvus failed; what was written stays, and a rerun resumes from it.
    """
    say = log or (lambda _m: None)
    ids = [str(i) for i in ids]
    if len(ids) != len(features):
        raise ValueError(f"{len(features)} rows and {len(ids)} ids must match")
    longest = max((len(i) for i in ids), default=0)
    if longest > ID_MAX_LENGTH:
        raise ValueError(f"an image id has {longest} characters; a collection takes at most {ID_MAX_LENGTH}")
    index_params(index_type, len(ids))  # refuse a bad type before touching the collection
    t0 = time.perf_counter()
    revision = uuid.uuid4().hex
    try:
        exists = client.has_collection(name)
        if exists and replace:
            say(f"milvus: dropping collection {name!r}")
            client.drop_collection(name)
            exists = False
        if exists:
            check_identity(client, name, meta)
            client.load_collection(name)  # reopened, a Milvus Lite database has it released
            before = stored_digests(client, name)
        else:
            say(f"milvus: creating collection {name!r} ({index_type}, dimension {meta['dim']})")
            _create_collection(client, name, meta, index_type, len(ids), revision)
            before = {}
        digests = _digests(features)
        position = {i: r for r, i in enumerate(ids)}
        gone = [i for i in before if i not in position]
        changed = [r for r, i in enumerate(ids) if i in before and before[i] != int(digests[r])]
        new = [r for r, i in enumerate(ids) if i not in before]
        say(f"milvus: {len(new)} new, {len(changed)} changed, {len(gone)} removed, "
            f"{len(ids) - len(new) - len(changed)} kept")
        stale = gone + [ids[r] for r in changed]
        for start in range(0, len(stale), 10_000):
            client.delete(name, ids=stale[start : start + 10_000])
        _insert(client, name, features, ids, digests, sorted(new + changed), progress)
        client.flush(name)
        _wait_indexed(client, name, say)
        client.load_collection(name)
        client.alter_collection_properties(name, properties={REVISION_PROPERTY: revision})
        count = count_rows(client, name)
        index = describe_vector_index(client, name)
    except _failures() as e:
        raise MilvusError(f"Milvus failed while publishing into {name!r}: {_reason(e)}") from None
    if count != len(ids):
        raise MilvusError(f"collection {name!r} holds {count} rows after publishing {len(ids)}")
    _, search = index_params(index["index_type"], count)
    record = {"collection": name, "dim": int(meta["dim"]), "count": count, "metric": METRIC,
              "index_type": index["index_type"], "index_params": index["params"], "search_params": search,
              "rerank": DEFAULT_RERANK, "revision": revision,
              "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return PublishReport(len(new), len(changed), len(gone), len(ids) - len(new) - len(changed),
                         time.perf_counter() - t0, record)


def _wait_indexed(client, name: str, say: Callable[[str], None], timeout: float = INDEX_WAIT_S) -> None:
    """Waits until the server has built the vector index of every row written: until then a server
    searches the rows without it (brute force or a coarse interim index), slower and with another recall."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        info = dict(client.describe_index(name, VECTOR_FIELD))
        pending = int(info.get("pending_index_rows") or 0)
        if pending == 0 or time.monotonic() > deadline:
            return
        if pending != last:
            say(f"milvus: indexing, {pending} rows to go")
            last = pending
        time.sleep(0.5)


def _digests(features: np.ndarray, block: int = 16384) -> np.ndarray:
    return np.concatenate([row_digests(read_block(features, s, s + block)) for s in range(0, len(features), block)]
                          or [np.zeros(0, np.int64)])


def _insert(client, name: str, features, ids: list[str], digests: np.ndarray, rows: list[int],
            progress: Callable[[int, int], None] | None) -> None:
    batch = max(1, BATCH_BYTES // (4 * features.shape[1]))
    done = 0
    if progress is not None:
        progress(0, len(rows))
    for start in range(0, len(rows), batch):
        part = np.asarray(rows[start : start + batch], dtype=np.int64)
        vectors = np.asarray(features[part], dtype=np.float32)
        client.insert(name, [{ID_FIELD: ids[r], VECTOR_FIELD: v, DIGEST_FIELD: int(digests[r])}
                             for r, v in zip(part.tolist(), vectors)])
        done += len(part)
        if progress is not None:
            progress(done, len(rows))


def describe_vector_index(client, name: str) -> dict:
    """Returns {"index_type", "params"} of the collection's vector index, as it was created."""
    recorded = collection_properties(client, name).get(INDEX_PROPERTY)
    if recorded:
        return json.loads(recorded)
    info = dict(client.describe_index(name, VECTOR_FIELD))  # a collection made elsewhere
    return {"index_type": str(info["index_type"]), "params": {}}


# ---------------------------------------------------------------- serving


def check_collection(client, name: str, meta: dict) -> dict:
    """Returns the index's "milvus" record after checking that collection `name` serves this index.

    Raises:
        CollectionMismatch: the collection is missing, holds another descriptor space or another
            row count, or was published from another version of the index (its revision).
        MilvusError: Milvus failed to answer.
    """
    try:
        return _check_collection(client, name, meta)
    except _failures() as e:
        raise MilvusError(f"Milvus failed to describe collection {name!r}: {_reason(e)}") from None


def _check_collection(client, name: str, meta: dict) -> dict:
    record = meta.get("milvus") or {}
    if not client.has_collection(name):
        raise CollectionMismatch(f"there is no collection {name!r}: publish the index first "
                                 "(python -m precompute.publish_milvus)")
    check_identity(client, name, meta)
    client.load_collection(name)  # a Milvus Lite database opened again starts with it released
    count = count_rows(client, name)
    if count != int(meta["count"]):
        raise CollectionMismatch(f"collection {name!r} holds {count} rows, the index {meta['count']}")
    revision = collection_properties(client, name).get(REVISION_PROPERTY)
    if record.get("revision") and revision != record["revision"]:
        raise CollectionMismatch(f"collection {name!r} was published from another version of this index "
                                 "(revision differs): publish this index again")
    return record


class MilvusRows(RowSource):
    """The rows of an index that live in a Milvus collection: searched there, read from there.

    A `RowSource` (row numbers are the index's rows, mapped to and from its ids) and the search
    backend "milvus" of `retrieval.search.Searcher`.

    Args:
        client: a connected `pymilvus.MilvusClient`.
        collection: the collection's name.
        ids: (n,) the index's image ids; row i is ids[i].
        dim: the descriptors' dimension.
        search_params: the ANN's search parameters ({"nprobe": 128}, {"ef": 256}, {}).
        rerank: candidates asked from the ANN and scored exactly per search.
        where: the URI without credentials, for messages.
        timeout: seconds a call may take.
    """

    def __init__(self, client, collection: str, ids, *, dim: int, search_params: dict | None = None,
                 rerank: int = DEFAULT_RERANK, where: str = "Milvus", timeout: float = TIMEOUT_S):
        self.client, self.collection = client, collection
        self.ids = [str(i) for i in ids]
        self._rows = {i: r for r, i in enumerate(self.ids)}
        self.dim, self.rerank, self.where, self.timeout = int(dim), int(rerank), where, timeout
        self.search_params = dict(search_params or {})
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, rows), both (m, k), best first: the ANN's candidates scored exactly.

        Ties go to the lower row. A query with fewer than k candidates pads with row -1.

        Raises:
            SearchUnavailable: Milvus did not answer.
        """
        queries = as_rows(queries, name="queries")
        limit = min(len(self), max(k, self.rerank))
        params = dict(self.search_params)
        if "ef" in params:  # HNSW returns at most ef rows, and Milvus refuses an ef below the limit
            params["ef"] = max(int(params["ef"]), limit)
        hits = self._call(lambda: self.client.search(
            self.collection, queries.tolist(), limit=limit, output_fields=[VECTOR_FIELD],
            search_params={"metric_type": METRIC, "params": params}, timeout=self.timeout,
            consistency_level=SEARCH_CONSISTENCY))
        from retrieval.ann import rerank_exact

        # The hits' vectors go into the cache; the ANN's exact re-scoring then reads them from it.
        found = [self._remember(hit) for hit in hits]
        candidates = np.full((len(queries), max([k, *map(len, found)])), -1, dtype=np.int64)
        for i, cand in enumerate(found):
            candidates[i, : len(cand)] = cand
        return rerank_exact(self, queries, candidates, k)

    def take(self, rows) -> np.ndarray:
        """Returns (len(rows), d) float32 rows: from the candidates' cache, the rest read from Milvus."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        with self._lock:
            missing = sorted({int(r) for r in rows if int(r) not in self._cache})
        if missing:
            got = self._call(lambda: self.client.get(self.collection, ids=[self.ids[r] for r in missing],
                                                     output_fields=[VECTOR_FIELD], timeout=self.timeout,
                                                     consistency_level=SEARCH_CONSISTENCY))
            self._remember(got)
        with self._lock:
            try:
                return np.stack([self._cache[int(r)] for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)
            except KeyError as e:
                raise SearchUnavailable(f"image {self.ids[int(e.args[0])]!r} is no longer in the collection "
                                        f"{self.collection!r}") from None

    def _remember(self, found) -> np.ndarray:
        """Caches the vectors of Milvus hits or rows; returns their (c,) rows."""
        rows, vectors = [], []
        for hit in found:
            entity = hit.get("entity", hit)
            row = self._rows.get(str(hit.get("id", entity.get(ID_FIELD))))
            if row is None:  # published after this app started: it has no thumbnail here
                continue
            rows.append(row)
            vectors.append(np.asarray(entity[VECTOR_FIELD], dtype=np.float32))
        with self._lock:
            for r, v in zip(rows, vectors):
                self._cache[r] = v
                self._cache.move_to_end(r)
            while len(self._cache) > CACHE_ROWS:
                self._cache.popitem(last=False)
        return np.asarray(rows, dtype=np.int64)

    def _call(self, fn):
        """Returns fn(); on a failure loads the collection and tries once more (a restarted Milvus
        Lite, or a server that lost its query nodes, comes back with the collection released).

        Raises:
            SearchUnavailable: the second try failed too.
        """
        failures = _failures()
        try:
            return fn()
        except failures:
            pass
        try:
            self.client.load_collection(self.collection, timeout=self.timeout)
            return fn()
        except failures as e:
            raise SearchUnavailable(f"the search service ({self.where}) is not answering: {_reason(e)}") from None


@dataclass
class MilvusTarget:
    """Where an evaluation searches through Milvus: a connected client and a scratch collection.

    `serve` publishes a database into the collection (replacing what it held) and returns its
    `MilvusRows`, the rows named by their row numbers; `report` is the last publication's.

    Attributes:
        client: a connected `pymilvus.MilvusClient`.
        collection: the collection to (re)write.
        index_type: its vector index (see `index_params`).
        search_params: overrides the index type's search parameters; None keeps them.
        rerank: candidates scored exactly per search.
        where: the URI without credentials, for messages.
    """

    client: object
    collection: str
    index_type: str = DEFAULT_INDEX_TYPE
    search_params: dict | None = None
    rerank: int = DEFAULT_RERANK
    where: str = "Milvus"
    report: PublishReport | None = None

    def serve(self, db: np.ndarray, identity: dict | None = None,
              log: Callable[[str], None] | None = None) -> MilvusRows:
        """Publishes (n, d) rows as ids "0".."n-1" and returns the `MilvusRows` that searches them.

        The same array served again is not published again (an evaluation that ranks twice, a
        benchmark that measures the search before ranking through it)."""
        served = getattr(self, "_served", None)
        if served is not None and served[0] is db:
            return served[1]
        ids = [str(i) for i in range(len(db))]
        meta = {"network": "evaluation", "weights": "", "pipeline": {}, **(identity or {}), "dim": int(db.shape[1])}
        self.report = publish_rows(self.client, self.collection, db, ids, meta, index_type=self.index_type,
                                   replace=True, log=log)
        params = self.search_params if self.search_params is not None else self.report.record["search_params"]
        rows = MilvusRows(self.client, self.collection, ids, dim=db.shape[1], search_params=params,
                          rerank=self.rerank, where=self.where)
        self._served = (db, rows)
        return rows


@contextmanager
def evaluation_target(uri: str | None, collection: str, *, token: str | None = None,
                      index_type: str = DEFAULT_INDEX_TYPE, search_params: dict | None = None,
                      rerank: int = DEFAULT_RERANK):
    """Yields a `MilvusTarget` at `uri`, or in a Milvus Lite database in a temporary folder (removed
    afterwards) when `uri` is None; the collection is dropped afterwards either way.

    Raises:
        MilvusError: Milvus cannot be reached at `uri`.
    """
    with tempfile.TemporaryDirectory(prefix="milvus-lite-") as scratch:
        uri = uri or str(Path(scratch) / "evaluation.db")
        client = connect(uri, token=token)
        target = MilvusTarget(client, collection, index_type=index_type, search_params=search_params,
                              rerank=rerank, where=f"Milvus at {safe_uri(uri)}")
        try:
            yield target
        finally:
            with suppress(Exception):  # a server gone by now keeps its collection; nothing else to do
                client.drop_collection(collection)
            close(client, uri)


def close(client, uri: str) -> None:
    """Closes the client; for Milvus Lite, also stops the in-process server of that database."""
    with suppress(Exception):
        client.close()
    if is_local(uri):
        with suppress(ImportError):
            from milvus_lite import server_manager_instance

            server_manager_instance.release_server(uri)
