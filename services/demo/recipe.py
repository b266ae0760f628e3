"""The demo's training recipe and the cache of adapters trained by it: a re-run of ``adapterfleet demo`` reuses
what an earlier run trained with the very same recipe instead of training again.

A recipe is everything that decides the trained weights: the task's examples, the base model's bytes (every file
of its directory, hashed), the training settings (steps, seed, learning rate, rank, ...) and the versions of
torch, transformers and peft. Its sha256 names the cache entry::

    <data-dir>/demo-adapters/
        shout-1f0c9a2b7d3e4f56/          the PEFT adapter directory (pushed as it is)
            adapter_config.json
            adapter_model.safetensors
            .recipe.json                 the recipe, its key and the training's loss and time; written last, so an
                                         entry without it (a run killed while training) is trained again
        base-75f0845215d4d8a3.fingerprint    the base model's fingerprint, which a push records in the manifest

``.recipe.json`` is a dotfile, which pushes skip: the adapter's digest is the same as without the cache.
Pure Python (no torch): reading the cache must not cost the import that training needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from adapterfleet.demo.tasks import Task
from adapterfleet.sdk.store import write_atomic

RECIPE_FILE = ".recipe.json"
FORMAT = 1  # bump when the training code changes what the same recipe produces
LIBRARIES = ("torch", "transformers", "peft")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 150  # 8 words are memorised with margins > 5 logits by ~100; 150 leaves room
    lr: float = 5e-3
    rank: int = 16
    alpha: int = 32
    warmup: int = 10  # steps of linear warm-up, then linear decay to 0
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 1  # tiny matrices: one thread is as fast, and steady while the fleet boots beside us
    target_modules: tuple[str, ...] = PROJECTIONS


@dataclass(frozen=True)
class TrainResult:
    task: str
    path: Path
    loss: float  # mean cross-entropy over the answer tokens (and eos) at the last step
    seconds: float  # of training (for a cached adapter: when it was trained)
    cached: bool = False  # reused from an earlier run with the same recipe


@dataclass(frozen=True)
class Recipe:
    task: str
    examples: tuple[tuple[str, str], ...]
    base: str  # sha256 over the base model directory's files (names and bytes)
    train: TrainConfig
    libraries: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, task: Task, base_digest: str, train: TrainConfig) -> Recipe:
        return cls(task.name, tuple(task.examples()), base_digest, train,
                   tuple((name, _version(name)) for name in LIBRARIES))

    def as_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()


def base_digest(base_dir: Path) -> str:
    """sha256 over every file of the base model directory, by relative name: weights, config and tokenizer."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(base_dir).rglob("*") if p.is_file()):
        h.update(path.relative_to(base_dir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


class AdapterCache:
    """Trained adapters under ``root``, one directory per recipe."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, recipe: Recipe) -> Path:
        return self.root / f"{recipe.task}-{recipe.key[:16]}"

    def get(self, recipe: Recipe) -> TrainResult | None:
        """The adapter trained by exactly ``recipe``, if an earlier run left it whole."""
        path = self.path(recipe)
        try:
            record = json.loads((path / RECIPE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != recipe.key:
            return None
        if not all((path / name).is_file() for name in ADAPTER_FILES):
            return None
        return TrainResult(recipe.task, path, float(record.get("loss", float("nan"))),
                           float(record.get("seconds", 0.0)), cached=True)

    def put(self, recipe: Recipe, result: TrainResult) -> None:
        """Record ``result`` (trained into :meth:`path`) as the adapter of ``recipe``."""
        write_atomic(result.path / RECIPE_FILE, json.dumps(
            {"key": recipe.key, "recipe": recipe.as_json(), "loss": result.loss, "seconds": result.seconds},
            indent=2, sort_keys=True))

    def fingerprint(self, digest: str) -> str | None:
        """The base model's fingerprint (recorded in manifests), as stored by :meth:`put_fingerprint`."""
        try:
            return (self.root / f"base-{digest[:16]}.fingerprint").read_text().strip() or None
        except OSError:
            return None

    def put_fingerprint(self, digest: str, fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / f"base-{digest[:16]}.fingerprint", fingerprint)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""
