"""Publish an index as a Hugging Face dataset repository and pull it back through the Hub cache.

The only module that imports huggingface_hub. A published index is a dataset repo holding the
index's own files (see `retrieval.index`) and a dataset card (README.md) generated from
index.json. Pulling goes through huggingface_hub's cache: a second pull of the same revision
downloads nothing, and with HF_HUB_OFFLINE=1 it is served from the cache alone.

Every failure on the way in or out is raised as one `HubError` whose message says what went
wrong and what to do; a pulled index is only returned after `load_index` has checked every file
against the sha256 recorded in index.json, so a caller never gets half an index.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors surface through the hub calls
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCardData, HfApi, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from retrieval.index import (
    ANN_FILE,
    DATA_FILES,
    INDEX_FILES,
    META_FILE,
    PREVIEW_FILES,
    WHITENING_FILES,
    Index,
    IndexFormatError,
    load_index,
    read_meta,
)

REPO_TYPE = "dataset"
CARD_FILE = "README.md"
DEFAULT_BRANCH = "main"
# Everything an index may hold; a pull fetches these and nothing else (no card, no build cache).
PULLED_FILES = (*INDEX_FILES, *WHITENING_FILES, ANN_FILE, *PREVIEW_FILES)

_TRANSPORT_ERRORS = (httpx2.TransportError, OSError)


class HubError(RuntimeError):
    """A push or pull that failed, with what went wrong and what to do about it."""


def index_files(index_dir) -> list[str]:
    """Returns the names of the files that make the index in `index_dir`, index.json first.

    Only the index's own files: never a build cache or anything else left in the folder.

    Raises:
        IndexFormatError: `index_dir` is not an index.
    """
    meta = read_meta(index_dir)
    return [META_FILE, *DATA_FILES, *(WHITENING_FILES if meta.get("whitening") else ()),
            *((ANN_FILE,) if meta.get("ann") else ()),
            *(PREVIEW_FILES if "previews.bin" in meta["files"] else ())]


def push_index(
    index_dir,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    card: str | None = None,
    revision: str | None = None,
    tag: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Publishes the index in `index_dir` to the dataset repo `repo_id` in one commit; returns its id.

    Creates the repo if missing. The commit holds the index's files and a dataset card
    (README.md) generated from index.json, and deletes index files a previous push left that
    this index does not have (e.g. whitening arrays), so the repo always holds exactly one index.
    The index is loaded and verified before anything is sent.

    Args:
        index_dir: an index folder written by `retrieval.index.save_index`.
        repo_id: "user/name" of the dataset repo.
        token: a Hub token with write access; None lets huggingface_hub use HF_TOKEN or the
            stored login.
        private: create the repo private (ignored when it exists).
        commit_message: defaults to a summary of the index.
        card: Markdown placed in the card before the generated description.
        revision: the branch to commit to, created from main if missing; defaults to main.
        tag: also tag the new commit with this name (e.g. "v1"), for a Space to pin.
        endpoint: the Hub URL; None uses huggingface_hub's (HF_ENDPOINT or huggingface.co).

    Returns:
        The 40-hex id of the commit, a revision `pull_index` can pin.

    Raises:
        IndexFormatError: `index_dir` is not a valid index (nothing is sent).
        HubError: the Hub could not be reached or refused the push.
    """
    index_dir = Path(index_dir)
    index = load_index(index_dir)
    files = index_files(index_dir)
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or DEFAULT_BRANCH
    where = f"dataset {repo_id!r} on {api.endpoint}"
    message = commit_message or f"Index: {_summary(index.meta)}"
    try:
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        if branch != DEFAULT_BRANCH:
            api.create_branch(repo_id, repo_type=REPO_TYPE, branch=branch, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=branch))
        operations = [CommitOperationAdd(name, index_dir / name) for name in files]
        operations.append(CommitOperationAdd(CARD_FILE, dataset_card(index.meta, repo_id, text=card).encode()))
        operations += [CommitOperationDelete(name) for name in PULLED_FILES if name in remote and name not in files]
        commit = api.create_commit(
            repo_id, operations, commit_message=message, repo_type=REPO_TYPE, revision=branch
        )
        if tag is not None:
            api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type=REPO_TYPE)
    except HfHubHTTPError as error:
        raise HubError(_push_refused(error, where)) from error
    except _TRANSPORT_ERRORS as error:
        raise HubError(
            f"the push of {index_dir} to {where} failed ({_cause(error)}): "
            "check the network connection and the endpoint, then push again."
        ) from error
    return commit.oid


def _push_refused(error: HfHubHTTPError, where: str) -> str:
    status = error.response.status_code if error.response is not None else None
    if status in (401, 403):
        return (
            f"not allowed to write to {where} (HTTP {status}): log in with `huggingface-cli login` "
            "or set HF_TOKEN to a token with write access to that namespace."
        )
    return f"the Hub refused the push to {where}: {_first_line(error)}"


def pull_index_dir(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir=None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Returns the folder, in huggingface_hub's cache, holding the index files of `repo_id`.

    Files already in the cache for that revision are not downloaded again. A commit id revision
    needs no request at all once cached; a branch or tag costs one request to resolve it. With
    HF_HUB_OFFLINE=1 the cache alone answers. The folder is not checked: use `pull_index`.

    Args:
        repo_id: "user/name" of the dataset repo.
        revision: branch, tag or commit id; None means main.
        cache_dir: huggingface_hub cache folder; None uses its default (HF_HUB_CACHE).
        endpoint: the Hub URL; None uses huggingface_hub's (HF_ENDPOINT or huggingface.co).
        token: for a private repo; None lets huggingface_hub use HF_TOKEN or the stored login.

    Raises:
        HubError: the repo or revision does not exist, the Hub cannot be reached and the cache
            does not hold the revision, or a download was interrupted.
    """
    api = HfApi(endpoint=endpoint, token=token)
    where = f"dataset {repo_id!r} at revision {revision or DEFAULT_BRANCH!r} on {api.endpoint}"
    try:
        folder = snapshot_download(
            repo_id,
            repo_type=REPO_TYPE,
            revision=revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            allow_patterns=list(PULLED_FILES),
        )
    except RevisionNotFoundError as error:
        raise HubError(_revision_missing(repo_id, revision, api)) from error
    except RepositoryNotFoundError as error:
        raise HubError(_not_found(api, repo_id, revision)) from error
    except IncompleteSnapshotError as error:
        raise HubError(
            f"the cached copy of {where} is incomplete (an earlier download was interrupted) and the Hub "
            f"cannot be reached to finish it ({_cause(error.__cause__ or error)}): pull again with network access."
        ) from error
    except LocalEntryNotFoundError as error:
        raise HubError(_unavailable(error, api, repo_id, revision, where, cache_dir)) from error
    except HfHubHTTPError as error:
        raise HubError(f"the Hub refused the download of {where}: {_first_line(error)}") from error
    except _TRANSPORT_ERRORS as error:
        raise HubError(
            f"the download of {where} was interrupted ({_cause(error)}); nothing incomplete is used. "
            "Pull again: files already downloaded are kept."
        ) from error
    return Path(folder)


def pull_index(
    repo_id: str,
    *,
    revision: str | None = None,
    network: str | None = None,
    cache_dir=None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Index:
    """Returns the index published in `repo_id`, downloaded through the Hub cache and verified.

    The files go through `pull_index_dir` and are loaded by `load_index`, which checks each one
    against index.json. A cached copy that fails those checks (a corrupted or altered file) is
    removed from the cache and downloaded again, once, before giving up.

    Args:
        repo_id: "user/name" of the dataset repo.
        revision: branch, tag or commit id; None means main. Pin a commit id or a tag to keep
            serving the same index after newer pushes.
        network: refuse an index built by another network than this one (e.g. "efficientnet-b7").
        cache_dir: huggingface_hub cache folder; None uses its default (HF_HUB_CACHE).
        endpoint: the Hub URL; None uses huggingface_hub's (HF_ENDPOINT or huggingface.co).
        token: for a private repo; None lets huggingface_hub use HF_TOKEN or the stored login.

    Raises:
        HubError: as `pull_index_dir`; or the index was built by another network; or its files
            do not match index.json even after a fresh download.
    """
    where = f"dataset {repo_id!r} at revision {revision or DEFAULT_BRANCH!r}"
    pull = dict(revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token)
    folder = pull_index_dir(repo_id, **pull)
    try:
        return _load_pulled(folder, network, where)
    except IndexFormatError:
        # Most likely a download that went wrong in a way sizes do not show: drop it, fetch it once more.
        _forget(folder)
    try:
        folder = pull_index_dir(repo_id, **pull)
    except HubError as error:
        raise HubError(f"the cached copy of {where} was damaged and has been removed; {error}") from error
    try:
        return _load_pulled(folder, network, where)
    except IndexFormatError as error:
        _forget(folder)
        raise HubError(
            f"the index in {where} is damaged even after a fresh download: {error}. "
            "Push the index again or pin a revision that holds a good one."
        ) from error


def _forget(folder: Path) -> None:
    """Removes a pulled index's files and the cached blobs behind them, so the next pull downloads them.

    The blobs must go too: huggingface_hub links a cached blob again instead of downloading it.
    """
    for name in PULLED_FILES:
        entry = folder / name
        if entry.is_symlink():
            blob = entry.resolve()
            entry.unlink()
            blob.unlink(missing_ok=True)
        elif entry.is_file():
            entry.unlink()


def _load_pulled(folder: Path, network: str | None, where: str) -> Index:
    """Loads a pulled index; a network mismatch is a HubError, any other defect an IndexFormatError."""
    try:
        return load_index(folder, network=network)
    except IndexFormatError as error:
        try:
            built_with = read_meta(folder)["network"]
        except IndexFormatError:
            raise error from None
        if network is not None and built_with != network:
            raise HubError(
                f"{where} holds an index built with network {built_with!r}, but this app embeds queries with "
                f"{network!r}: configure network {built_with!r} or pull an index built with {network!r}."
            ) from error
        raise


def _revision_missing(repo_id: str, revision: str | None, api: HfApi) -> str:
    return (
        f"revision {revision or DEFAULT_BRANCH!r} does not exist in dataset {repo_id!r} on {api.endpoint}: "
        "use a branch, tag or commit id of that repository."
    )


def _not_found(api: HfApi, repo_id: str, revision: str | None) -> str:
    """Message for a 'not found': the repo itself, or only the revision (one request to tell)."""
    if revision not in (None, DEFAULT_BRANCH):
        try:
            api.repo_info(repo_id, repo_type=REPO_TYPE, revision=DEFAULT_BRANCH)
        except (HfHubHTTPError, *_TRANSPORT_ERRORS):
            pass
        else:
            return _revision_missing(repo_id, revision, api)
    return (
        f"dataset repository {repo_id!r} was not found on {api.endpoint} (or it is private and no valid token "
        "was given): check the repository id; for a private repository log in with `huggingface-cli login` or "
        "set HF_TOKEN."
    )


def _unavailable(error: LocalEntryNotFoundError, api, repo_id, revision, where, cache_dir) -> str:
    cause = error.__cause__
    cache = cache_dir if cache_dir is not None else "the default huggingface_hub cache"
    if isinstance(cause, OfflineModeIsEnabled):
        return (
            f"offline mode is on (HF_HUB_OFFLINE=1) and {where} is not in {cache}: "
            "pull it once with network access, or unset HF_HUB_OFFLINE."
        )
    if isinstance(cause, HfHubHTTPError) and cause.response is not None and cause.response.status_code == 404:
        # Some Hub servers answer a commit id they do not have with a 404 on its file listing.
        return _not_found(api, repo_id, revision)
    return (
        f"cannot reach the Hub at {api.endpoint} ({_cause(cause or error)}), and dataset {repo_id!r} at revision "
        f"{revision or DEFAULT_BRANCH!r} is not in {cache}: "
        "check the network connection and the endpoint, then pull again."
    )


def _cause(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = (getattr(error, "server_message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- dataset card --------------------------------------------------------------------------------


def _summary(meta: dict) -> str:
    pooling = meta.get("pipeline", {}).get("pooling", "?")
    return f"{meta.get('count', '?')} images, {meta.get('network', '?')} + {pooling}, dim {meta.get('dim', '?')}"


def _source(meta: dict) -> dict | None:
    """The source collection as {"name", ...}, from a string or a dict; None when not recorded."""
    source = meta.get("source")
    if not source:
        return None
    if isinstance(source, str):
        return {"name": source}
    if isinstance(source, dict):
        return dict(source)
    return {"name": str(source)}


def _evaluations(meta: dict) -> list[dict]:
    """Measured results as dicts with "map" (and maybe "dataset", "protocol", "command")."""
    evaluation = meta.get("evaluation")
    if not evaluation:
        return []
    items = evaluation if isinstance(evaluation, list) else [evaluation]
    results = []
    for item in items:
        if not isinstance(item, dict):
            continue
        value = item.get("map", item.get("mAP"))
        if isinstance(value, (int, float)) and math.isfinite(value):
            results.append({**{k: v for k, v in item.items() if k != "mAP"}, "map": float(value)})
    return results


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "1M<n<10M"


def _pipeline_text(pipeline: dict) -> str:
    pooling = pipeline.get("pooling", "?")
    if pooling == "gem":
        pooling += f" (p = {pipeline.get('gem_p', 3.0):g})"
    if pipeline.get("squash"):
        size = f"images squashed to {pipeline['squash']} x {pipeline['squash']}"
    elif pipeline.get("max_side"):
        size = f"longer side resized to {pipeline['max_side']}"
    else:
        size = "images at their own size"
    scales = pipeline.get("scales") or [1.0]
    if list(scales) != [1.0]:
        size += ", scales " + ", ".join(f"{s:g}" for s in scales)
    return f"{pooling}; {size}"


def dataset_card(meta: dict, repo_id: str, *, text: str | None = None) -> str:
    """Returns the README.md of a published index: YAML metadata and a description, from index.json meta.

    The metadata block holds the Hub's dataset fields and, under `retrieval_index`, the network,
    pooling, image count, dimension, source collection and measured mAP with its command (the
    last two only when index.json records `source` and `evaluation`).
    """
    pipeline = meta.get("pipeline", {})
    count = int(meta.get("count", 0))
    source = _source(meta)
    evaluations = _evaluations(meta)
    network = meta.get("network", "unknown")
    details = {
        "format_version": meta.get("format_version"),
        "network": network,
        "weights": meta.get("weights"),
        "pooling": pipeline.get("pooling"),
        "pipeline": pipeline,
        "images": count,
        "dim": meta.get("dim"),
        "dtype": meta.get("dtype"),
        "whitening": meta.get("whitening"),
        "source": source,
        "evaluation": evaluations or None,
    }
    card_data = DatasetCardData(
        pretty_name=f"Image retrieval index: {network} + {pipeline.get('pooling', '?')}",
        tags=["image-retrieval", "embeddings", "landmarks"],
        task_categories=["image-feature-extraction"],
        size_categories=[_size_category(count)],
        viewer=False,  # .npy arrays and a binary thumbnail blob: nothing the dataset viewer can show
        retrieval_index={k: v for k, v in details.items() if v is not None},
    )
    whitening = meta.get("whitening")
    rows = [
        ("Network", f"`{network}` (weights: {meta.get('weights', 'unknown')})"),
        ("Pooling", _pipeline_text(pipeline)),
        ("Images", f"{count:,}"),
        ("Dimension", f"{meta.get('dim', '?')} ({meta.get('dtype', '?')}, L2-normalised)"),
        ("Whitening", f"PCA, {whitening.get('dim_in')} -> {whitening.get('dim_out')} dims" if whitening else "none"),
        ("Source collection", _source_text(source) if source else "not recorded"),
    ]
    if evaluations:
        rows += [("Measured mAP", _evaluation_text(e)) for e in evaluations]
    else:
        rows.append(("Measured mAP", "not measured"))
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {card_data.pretty_name}",
        "",
    ]
    if text:
        lines += [text.strip(), ""]
    lines += [
        "A search index for image retrieval: one global descriptor per image, the image ids, and a JPEG "
        "thumbnail of every image. `index.json` describes how the descriptors were made; a query must be "
        "embedded the same way.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    commands = [e["command"] for e in evaluations if e.get("command")]
    if commands:
        lines += ["Measured with:", "", "```bash", *commands, "```", ""]
    lines += [
        "## Files",
        "",
        "- `index.json`: format version, network, weights, pipeline, dimension, dtype, count, whitening, "
        "library versions and the sha256 of every file below",
        "- `feature_list.npy`: (n, d) descriptors, one row per image",
        "- `feature_id.npy`: (n,) image ids",
        "- `thumbnails.bin`, `thumbnails_offsets.npy`: the thumbnails, concatenated, and their byte offsets",
    ]
    if whitening:
        lines.append("- `whitening_mean.npy`, `whitening_projection.npy`: the PCA-whitening applied to queries")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from retrieval.hub import pull_index",
        "",
        f'index = pull_index("{repo_id}", revision="<commit id or tag>", network="{network}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _source_text(source: dict) -> str:
    text = str(source.get("name", "unnamed"))
    if source.get("url"):
        text = f"[{text}]({source['url']})"
    if source.get("license"):
        text += f" (license: {source['license']})"
    return text


def _evaluation_text(evaluation: dict) -> str:
    where = " ".join(str(evaluation[k]) for k in ("dataset", "protocol") if evaluation.get(k))
    value = f"{100 * evaluation['map']:.2f} %"
    return f"{value} on {where}" if where else value
