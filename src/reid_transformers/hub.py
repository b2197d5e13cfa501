"""Model cards and Hub publishing for re-ID checkpoints.

A checkpoint folder written by ``save_pretrained`` (``model.safetensors``, ``config.json``,
``preprocessor_config.json``) becomes publishable in two steps:

1. :func:`render_model_card` fills the architecture's Jinja template (shipped in
   ``reid_transformers/model_cards/``) with the checkpoint's training recipe and retrieval
   metrics, and :func:`save_model_card` writes it beside the weights as ``README.md``.
   The card's YAML metadata carries a ``model-index`` with the metrics, so the Hub shows
   them on the model page.
2. :func:`push_to_hub` uploads the folder, card included, in one commit. It never changes
   anything local; when the Hub cannot be reached it raises :class:`HubPushError` saying
   what failed and how to retry.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import httpx as hub_httpx  # the HTTP client huggingface_hub uses
from transformers import PreTrainedConfig

from .utils import write_atomically

__all__ = [
    "KNOWN_DATASETS",
    "PUSH_IGNORE_PATTERNS",
    "HubPushError",
    "available_model_card_templates",
    "model_card_template",
    "push_to_hub",
    "render_model_card",
    "save_model_card",
]

_TEMPLATE_PACKAGE = "reid_transformers"
_TEMPLATE_FOLDER = "model_cards"
_TEMPLATE_SUFFIX = ".md.jinja"
# Shared layout every architecture's template extends; not a model type.
_BASE_TEMPLATE = "_base" + _TEMPLATE_SUFFIX

# The Hub has no re-ID task id: a re-ID model is an image feature extractor whose
# embeddings are ranked, so the model-index uses that task with a human-readable name.
TASK_TYPE = "image-feature-extraction"
TASK_NAME = "Person Re-Identification"

# `load_reid_dataset` names -> the names papers and leaderboards use.
KNOWN_DATASETS: dict[str, str] = {
    "market1501": "Market-1501",
    "dukemtmc": "DukeMTMC-reID",
    "occluded_duke": "Occluded-DukeMTMC",
    "msmt17": "MSMT17",
    "msmt17_v2": "MSMT17 (V2)",
    "cuhk03_np": "CUHK03-NP",
    "synthetic": "reid_transformers synthetic pedestrians",
    "generic": "custom dataset (generic CSV layout)",
}

# Metric keys as `evaluate_ranking(...).as_dict()` and the `evaluate` metric return them.
_HEADLINE_METRICS = ("mAP", "rank-1", "rank-5", "rank-10", "mINP")
_REQUIRED_METRICS = ("mAP", "rank-1")
_RANK_KEY = re.compile(r"^rank-([1-9]\d*)$")
_COUNT_METRICS = ("num_valid_queries", "num_skipped_queries")
# Returned by the `evaluate` metric but too long for a card (the curve up to max_rank).
_IGNORED_METRICS = ("cmc",)

_RECIPE_LABELS = {
    "epochs": "Epochs",
    "optimizer": "Optimizer",
    "learning_rate": "Learning rate",
    "trunk_lr_factor": "Trunk learning-rate factor",
    "transformer_lr_factor": "Transformer learning-rate factor",
    "weight_decay": "Weight decay",
    "weight_decay_scope": "Weight decay applies to",
    "max_steps": "Optimizer steps (budget)",
    "momentum": "Momentum",
    "scheduler": "Learning-rate schedule",
    "warmup": "Warm-up",
    "batch": "Batch",
    "identities_per_batch": "Identities per batch (P)",
    "instances_per_identity": "Images per identity (K)",
    "input_size": "Input size (height x width)",
    "image_size": "Input size (height x width)",
    "augmentation": "Augmentation",
    "blockwise_unfreezing": "Blockwise unfreezing",
    "mixed_precision": "Mixed precision",
    "seed": "Seed",
}
_EVALUATION_LABELS = {
    "distance": "Distance",
    "flip": "Flip test (average with mirrored crop)",
    "eval_flip": "Flip test (average with mirrored crop)",
    "rerank": "k-reciprocal re-ranking",
    "eval_rerank": "k-reciprocal re-ranking",
}
_SIZE_KEYS = ("input_size", "image_size")
# config.json entries that describe the file, not the architecture.
_CONFIG_NOISE = frozenset({
    "transformers_version", "model_type", "architectures", "dtype", "torch_dtype",
    "_name_or_path", "auto_map", "id2label", "label2id",
})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
REQUIRED_FILES = ("config.json", "preprocessor_config.json", "README.md")
# Pickled weights run code when loaded, and checkpoints here are safetensors only: keep
# stray pickles (training state, third-party conversions) and hidden files off the Hub.
PUSH_IGNORE_PATTERNS = (".*", "**/.*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")


# ---------------------------------------------------------------------- templates
def _template_files() -> Traversable:
    return importlib.resources.files(_TEMPLATE_PACKAGE).joinpath(_TEMPLATE_FOLDER)


def available_model_card_templates() -> list[str]:
    """Model types that have a model card template, sorted (e.g. ``["aaformer", ...]``)."""
    names = (entry.name for entry in _template_files().iterdir())
    return sorted(
        name[: -len(_TEMPLATE_SUFFIX)]
        for name in names
        if name.endswith(_TEMPLATE_SUFFIX) and not name.startswith("_")
    )


def model_card_template(model_type: str) -> str:
    """The Jinja source of ``model_type``'s card template.

    Raises:
        ValueError: no template exists for ``model_type``.
    """
    available = available_model_card_templates()
    if model_type not in available:
        raise ValueError(
            f"no model card template for model_type {model_type!r}; templates exist for "
            f"{available}. Add {model_type}{_TEMPLATE_SUFFIX} to "
            f"{_TEMPLATE_PACKAGE}/{_TEMPLATE_FOLDER}/ (it extends {_BASE_TEMPLATE})."
        )
    return _template_files().joinpath(model_type + _TEMPLATE_SUFFIX).read_text(encoding="utf-8")


# ---------------------------------------------------------------------- card rendering
def render_model_card(
    config: PreTrainedConfig,
    *,
    model_name: str,
    repo_id: str | None = None,
    dataset_name: str | None = None,
    dataset_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    reranked_metrics: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    language: str | Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> ModelCard:
    """Render the model card of a checkpoint from its architecture's template.

    The template is picked by ``config.model_type``. The card's YAML metadata gets the
    license, tags, ``pipeline_tag: image-feature-extraction``, ``datasets`` (from
    ``dataset_id``), ``base_model`` and, when ``metrics`` are given, a ``model-index``
    with one entry per metric. Metric values there and in the card's table are percentages
    rounded to two decimals, as re-ID papers and leaderboards report them. Nothing is
    fetched from the network (``card.validate()`` would need it and is not called).

    Args:
        config: the checkpoint's config (any re-ID architecture's ``PreTrainedConfig``).
        model_name: the model's name on leaderboards and in the card's title.
        repo_id: ``namespace/name`` the card will be published under; used in the loading
            snippets. Without it they load from ``"path/to/checkpoint"``.
        dataset_name: the training/evaluation dataset: a :func:`load_reid_dataset
            <reid_transformers.data.load_reid_dataset>` name (``"market1501"``, ...; shown by
            its usual name, see :data:`KNOWN_DATASETS`) or any display name. Required with
            ``metrics``.
        dataset_id: the dataset's id on the Hub, if it has one (metadata ``datasets``).
        metrics: retrieval metrics without re-ranking, as fractions in [0, 1], keyed like
            :meth:`RankingResult.as_dict <reid_transformers.evaluation.RankingResult.as_dict>`
            and the ``evaluate`` metric: ``mAP`` and ``rank-1`` required, ``rank-5``,
            ``rank-10`` (any ``rank-k``), ``mINP`` optional; ``num_valid_queries`` and
            ``num_skipped_queries`` (counts) are shown if present; ``cmc`` is ignored.
        reranked_metrics: the same with k-reciprocal re-ranking; a second table row and
            model-index entries named "... (re-ranked)".
        evaluation: protocol facts to list, e.g. ``{"distance": "cosine", "flip": False}``.
        training: recipe facts to list in order, e.g. ``{"epochs": 30, "optimizer": "adam",
            "learning_rate": 3e-4, "batch": "8 identities x 4 images", "input_size": [256,
            128], "augmentation": {...}, "blockwise_unfreezing": {...}}``. Known keys get
            readable labels; any other key is listed as given. Values: str, numbers, bools,
            lists and flat dicts of those.
        base_model: what the trunk was initialised from. A Hub id (``google/vit-base-
            patch16-224``) also goes into the metadata; a local path or file is only named
            in the text (the Hub rejects non-ids there).
        license: SPDX-style license id of the weights for the Hub.
        language: metadata ``language``; usually None for an image model.
        tags: extra Hub tags (the card always has ``reid-transformers``,
            ``person-re-identification`` and the model type).

    Returns:
        The rendered :class:`huggingface_hub.ModelCard`; ``str(card)`` is the README text.

    Raises:
        ValueError: unknown ``config.model_type``; an empty ``model_name``; malformed
            ``repo_id``; ``metrics`` without ``dataset_name``, with unknown keys, missing
            ``mAP``/``rank-1``, or values outside [0, 1]; a ``training``/``evaluation`` key
            that is not a string.
    """
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"config must have a model_type, got {type(config).__name__}")
    template = model_card_template(model_type)
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    if repo_id is not None:
        _check_repo_id(repo_id)
    if dataset_name is not None and (not isinstance(dataset_name, str) or not dataset_name.strip()):
        raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}")
    if (metrics or reranked_metrics) and not dataset_name:
        raise ValueError("metrics need dataset_name: the dataset they were measured on")
    if reranked_metrics and not metrics:
        raise ValueError("reranked_metrics need metrics (the numbers without re-ranking) too")

    dataset = _describe_dataset(dataset_name, dataset_id)
    plain = _check_metrics(metrics, "metrics") if metrics else None
    reranked = _check_metrics(reranked_metrics, "reranked_metrics") if reranked_metrics else None
    eval_results = _eval_results(plain, dataset, reranked=False) + \
        _eval_results(reranked, dataset, reranked=True)

    hub_base_model = base_model if base_model and _is_hub_id(base_model) else None
    card_data = ModelCardData(
        license=license,
        language=list(language) if isinstance(language, (list, tuple)) else language,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        tags=["reid-transformers", "person-re-identification", TASK_TYPE, model_type,
              *(tags or ())],
        datasets=[dataset_id] if dataset_id else None,
        base_model=hub_base_model,
        # model_name only matters for (and is required by) the model-index.
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    config_dict = config.to_dict()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        # Extended by every architecture's template. huggingface_hub renders with a bare
        # jinja2.Template (no loader), so the base is passed as a template object.
        base=jinja2.Template(_template_files().joinpath(_BASE_TEMPLATE).read_text("utf-8")),
        title=model_name,
        model_type=model_type,
        load_from=repo_id or "path/to/checkpoint",
        dataset=dataset,
        eval_table=_metrics_table(plain, reranked),
        query_counts=_query_counts(plain or reranked),
        evaluation_rows=_fact_rows(evaluation, "evaluation", _EVALUATION_LABELS),
        training_rows=_fact_rows(training, "training", _RECIPE_LABELS),
        base_model_text=base_model,
        base_model_is_hub_id=hub_base_model is not None,
        input_size=_format_size(config_dict["image_size"]) if "image_size" in config_dict
        else None,
        num_identities=config_dict.get("num_identities"),
        config_rows=[(key, _format_value(value)) for key, value in config.to_diff_dict().items()
                     if key not in _CONFIG_NOISE],
    )


def save_model_card(card: ModelCard, directory: str | os.PathLike[str]) -> Path:
    """Write ``card`` to ``directory/README.md`` atomically; return the file's path.

    The text goes to a temporary file in ``directory`` that is renamed over ``README.md``
    once complete, so a crash leaves the old card or the new one, never half of one.

    Raises:
        FileNotFoundError: ``directory`` does not exist (it is the checkpoint's folder).
        NotADirectoryError: ``directory`` is a file.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(
            f"checkpoint folder {directory} does not exist; save the model there first"
        )
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder; expected a checkpoint folder")
    # Bytes keep the card's own line endings, as ModelCard.save does.
    return write_atomically(directory / "README.md", lambda f: f.write(str(card).encode("utf-8")))


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id) or ".." in repo_id \
            or repo_id.endswith((".", "-")) or len(repo_id) > 96:
        raise ValueError(
            f"repo_id must look like 'namespace/name' (letters, digits, '-', '_', '.'; at most "
            f"96 characters), got {repo_id!r}"
        )


def _is_hub_id(value: str) -> bool:
    # "org/name" could also be a relative folder; an existing path is a local checkpoint.
    return bool(_HUB_ID.match(value)) and not Path(value).exists()


def _describe_dataset(name: str | None, dataset_id: str | None) -> dict[str, Any]:
    key = name.strip().lower() if name else None
    if key in KNOWN_DATASETS:
        return {"key": key, "name": KNOWN_DATASETS[key], "type": key, "id": dataset_id}
    slug = (re.sub(r"[^a-z0-9]+", "-", key).strip("-") or "custom") if key else None
    return {"key": None, "name": name, "type": dataset_id or slug, "id": dataset_id}


def _check_metrics(metrics: Mapping[str, Any], argument: str) -> dict[str, float | int]:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{argument} must be a mapping of metric name to value, "
                         f"got {type(metrics).__name__}")
    checked: dict[str, float | int] = {}
    for key, value in metrics.items():
        if key in _IGNORED_METRICS:
            continue
        if key in _COUNT_METRICS:
            # numbers.* so numpy scalars (what array code returns) pass too.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{argument}[{key!r}] must be a count >= 0, got {value!r}")
            checked[key] = int(value)
            continue
        if key not in _HEADLINE_METRICS and not (isinstance(key, str) and _RANK_KEY.match(key)):
            raise ValueError(
                f"{argument} has an unknown key {key!r}; expected {list(_HEADLINE_METRICS)}, "
                f"other 'rank-k' keys, {list(_COUNT_METRICS)} or 'cmc'"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{argument}[{key!r}] must be a fraction in [0, 1] (e.g. 0.875 for 87.5 %), "
                f"got {value!r}"
            )
        checked[key] = float(value)
    missing = [key for key in _REQUIRED_METRICS if key not in checked]
    if missing:
        raise ValueError(f"{argument} lacks {missing}; mAP and rank-1 are required")
    return checked


def _metric_columns(*metric_sets: Mapping[str, Any] | None) -> list[str]:
    present = {key for values in metric_sets if values for key in values
               if key not in _COUNT_METRICS}
    ranks = sorted((k for k in present if k not in _HEADLINE_METRICS),
                   key=lambda k: int(_RANK_KEY.match(k).group(1)))
    # Headline order, with any extra rank-k column placed before mINP.
    return [k for k in _HEADLINE_METRICS[:-1] if k in present] + ranks + \
        [k for k in _HEADLINE_METRICS[-1:] if k in present]


def _eval_results(
    metrics: Mapping[str, Any] | None, dataset: Mapping[str, Any], *, reranked: bool
) -> list[EvalResult]:
    """model-index entries, one per metric (counts are not metrics)."""
    if metrics is None:
        return []
    return [
        EvalResult(
            task_type=TASK_TYPE, task_name=TASK_NAME,
            dataset_type=dataset["type"], dataset_name=dataset["name"],
            dataset_split="query/gallery", metric_type=key,
            metric_name=_metric_label(key) + (" (re-ranked)" if reranked else ""),
            metric_args={"re_ranking": "k-reciprocal"} if reranked else None,
            metric_value=_percent(metrics[key]),
        )
        for key in _metric_columns(metrics)
    ]


def _metric_label(key: str) -> str:
    return key.replace("rank-", "Rank-") if key.startswith("rank-") else key


def _percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def _metrics_table(
    plain: Mapping[str, Any] | None, reranked: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    if plain is None:
        return None
    columns = _metric_columns(plain, reranked)
    rows = []
    for label, values in (("without re-ranking", plain),
                          ("with k-reciprocal re-ranking", reranked)):
        if values is not None:
            rows.append((label, [f"{_percent(values[k]):.2f}" if k in values else "–"
                                 for k in columns]))
    return {"header": [_metric_label(k) for k in columns], "rows": rows}


def _query_counts(metrics: Mapping[str, Any] | None) -> dict[str, int] | None:
    if metrics is None or not all(key in metrics for key in _COUNT_METRICS):
        return None
    return {"valid": int(metrics["num_valid_queries"]),
            "skipped": int(metrics["num_skipped_queries"])}


def _fact_rows(
    facts: Mapping[str, Any] | None, argument: str, labels: Mapping[str, str]
) -> list[tuple[str, str]]:
    if facts is None:
        return []
    if not isinstance(facts, Mapping):
        raise ValueError(f"{argument} must be a mapping of setting name to value, "
                         f"got {type(facts).__name__}")
    rows = []
    for key, value in facts.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{argument} keys must be non-empty strings, got {key!r}")
        label = labels.get(key, key.replace("_", " ").capitalize())
        text = _format_size(value) if key in _SIZE_KEYS else _format_value(value)
        rows.append((label, text))
    return rows


def _format_size(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]} x {value[1]}"
    return _format_value(value)


def _format_float(value: float) -> str:
    # Learning rates read as 3e-4 and 3.5e-4, not 0.0003 or 3.500e-04.
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def _format_value(value: Any) -> str:
    """One table cell: compact, and free of the '|' that would split a Markdown row."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif value is None:
        text = "none"
    elif isinstance(value, float):
        text = _format_float(value)
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) or "none"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_format_value(v) for v in value) or "none"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------- pushing
class HubPushError(RuntimeError):
    """A push to the Hub failed (offline, unreachable, not authorised, refused).

    The message says what failed and how to retry; the local folder is untouched. The
    original exception is chained as ``__cause__``.
    """


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    create_repo: bool = True,
) -> str:
    """Upload a saved checkpoint folder to the Hub in one commit; return the commit URL.

    The folder must hold ``model.safetensors`` (or ``model.safetensors.index.json`` and
    every shard it lists), ``config.json``, ``preprocessor_config.json`` and ``README.md``
    (see :func:`save_model_card`); everything else in it is uploaded too, except hidden
    files and pickled weights (:data:`PUSH_IGNORE_PATTERNS`). Files the repository already
    holds unchanged are not sent again, so re-running after a failure is cheap. The folder
    is only read: a push never deletes, moves or modifies anything local.

    Args:
        folder: the checkpoint folder.
        repo_id: ``namespace/name`` (a user or organisation namespace is required).
        token: a Hub token with write access; default: the one ``hf auth login`` stored or
            ``HF_TOKEN``.
        private: create the repository private (an existing one keeps its visibility).
        commit_message: default ``"Upload <model_type> checkpoint"``.
        create_repo: create the repository if it does not exist; with False it must.

    Returns:
        URL of the commit on the Hub.

    Raises:
        FileNotFoundError: ``folder`` or a required file is missing (all are named).
        NotADirectoryError: ``folder`` is a file.
        ValueError: malformed ``repo_id``, or ``README.md``/``config.json`` that cannot be
            parsed.
        HubPushError: the Hub could not be reached or refused the push (offline mode,
            network error, not authorised, repository missing, server error).
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    model_type = _check_checkpoint_folder(folder)
    api = HfApi(token=token)
    try:
        if create_repo:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        else:
            # Fails fast (no upload retries) when the repository is missing or unreachable.
            api.repo_info(repo_id, repo_type="model")
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or f"Upload {model_type} checkpoint",
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        )
    except (OfflineModeIsEnabled, hub_httpx.TransportError, HfHubHTTPError) as error:
        raise HubPushError(_push_failure_message(error, folder, repo_id, api.endpoint)) from error
    return commit.commit_url


def _check_checkpoint_folder(folder: Path) -> str:
    """Everything a loadable, documented checkpoint needs; returns its model_type."""
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; expected a checkpoint folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                                .values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
            raise ValueError(f"{index} is not a safetensors index (no weight_map): "
                             f"{error}") from error
        missing += [shard for shard in shards if not (folder / shard).is_file()]
    elif not (folder / WEIGHTS_NAME).is_file():
        missing.append(f"{WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME} with its shards)")
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {folder} lacks {', '.join(missing)}. Write the weights and "
            f"config with model.save_pretrained(folder), the preprocessor config with "
            f"processor.save_pretrained(folder) and README.md with "
            f"save_model_card(render_model_card(...), folder)."
        )
    readme = folder / "README.md"
    try:
        ModelCard(readme.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{readme} has invalid YAML metadata, which the Hub would reject: "
                         f"{error}") from error
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model_type = model_type.get("model_type") if isinstance(model_type, dict) else None
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON: {error}") from error
    return model_type or "model"


def _push_failure_message(error: Exception, folder: Path, repo_id: str, endpoint: str) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    retry = ("then run the same command again; files the repository already holds unchanged "
             "are not sent twice.")
    if isinstance(error, OfflineModeIsEnabled):
        what = "offline mode is on (HF_HUB_OFFLINE=1), so no request was sent"
        how = ("Unset it (`unset HF_HUB_OFFLINE` or HF_HUB_OFFLINE=0), then run the same "
               "command again.")
    elif isinstance(error, hub_httpx.TransportError):
        what = f"could not reach {endpoint} ({type(error).__name__}: {error})"
        how = f"Check the network connection, any proxy (HTTPS_PROXY) and HF_ENDPOINT, {retry}"
    elif isinstance(error, RepositoryNotFoundError) or status in (401, 403):
        what = (f"the Hub refused access (HTTP {status}): the repository does not exist, or "
                f"the token is missing, invalid or cannot write to {repo_id.split('/')[0]!r}")
        how = ("Log in with a write token (`hf auth login`, or `huggingface-cli login` with "
               "older huggingface_hub), set HF_TOKEN or pass token=; create the repository or "
               f"push with create_repo=True; {retry}")
    else:
        what = f"the Hub answered HTTP {status}: {error}"
        how = f"If it is a server error (5xx), wait a moment, {retry}"
    return (f"Pushing {folder} to {repo_id!r} failed: {what}. Nothing local was changed: "
            f"{folder} is as it was. {how}")
