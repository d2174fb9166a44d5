"""SearchSettings: what one `lorakit search` runs (the base settings, the space, sampler, workers, storage), and
the storage URL with its database driver."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.experiments.search_space import DEFAULT_STUDY, SAMPLERS


@dataclass(frozen=True)
class SearchSettings:
    base: dict  # TrainConfig values as given (--config file, then flags), before defaults
    space: dict  # name -> tuple of values or Range
    output: Path
    sampler: str = "grid"
    n_trials: int | None = None  # random / tpe: trials the study should hold; grid: every combination
    workers: int = 1
    threads: int | None = None  # torch threads per trial; None = CPU cores // workers
    storage: str | None = None  # None = sqlite:///<output>/study.db
    study_name: str = DEFAULT_STUDY
    prune: bool = False
    metric: str | None = None  # a results column (validation_accuracy, validation_loss, ...); None = main metric
    direction: str = "maximize"
    seed: int = 0  # of the random / tpe sampler

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; accepted: {', '.join(SAMPLERS)}")
        if self.sampler != "grid" and not (self.n_trials and self.n_trials > 0):
            raise ValueError(f"--sampler {self.sampler} needs --n-trials N (the trials the study should hold)")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.prune and self.metric is not None:
            raise ValueError("--prune reports the task's main metric; leave --metric out with --prune")
        if self.storage is not None:
            object.__setattr__(self, "storage", storage_with_driver(self.storage))

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output / 'study.db').resolve()}"


# the extra of pyproject.toml that installs a storage's database driver (psycopg2 for PostgreSQL)
DRIVER_EXTRAS = {"postgresql": ("lorakit[postgres]", "postgresql+psycopg2")}


def storage_with_driver(url: str) -> str:
    """--storage as Optuna will open it. A bare postgresql:// URL takes psycopg2 (what `lorakit[postgres]` installs)
    where SQLAlchemy's default driver for it (psycopg 3 from SQLAlchemy 2.1) is missing. A ValueError (one line)
    for an unknown database or a missing driver, before Optuna fails on it with a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ValueError(f"--storage {url.split('://')[0]}://...: not a database URL SQLAlchemy knows "
                         "(e.g. sqlite:///study.db, postgresql://user:password@host/db)") from None
    extra, fallback = DRIVER_EXTRAS.get(dialect.name, (None, None))
    candidates = [url]
    if fallback and "+" not in parsed.drivername:
        candidates.append(url.replace(parsed.drivername, fallback, 1))
    errors = []
    for candidate in candidates:
        try:
            make_url(candidate).get_dialect().import_dbapi()
            return candidate
        except ImportError as err:
            errors.append(str(err))
    fix = f"pip install '{extra}'" if extra else f"install the Python package {dialect.driver}"
    raise ValueError(f"--storage {dialect.name}: no Python driver for it is installed ({'; '.join(errors)}); {fix}")
