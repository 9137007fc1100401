"""Settings from the environment (prefix COOK_): data location and every external endpoint."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """cook's settings. Each endpoint is a setting so a mirror or a local test server can stand in."""

    model_config = SettingsConfigDict(env_prefix="COOK_", env_file=".env", extra="ignore")

    # COOK_DATA_DIR: a folder, or a URL (s3://bucket/prefix, gs://…, memory://…). With a URL, `data_url` holds it
    # and `data_dir` is this machine's local folder for it under the cache (logs, ledgers, downloads, scratch);
    # what the stages read and write is at `location(...)`.
    data_dir: Path = Path("data")
    data_url: str | None = None
    user_agent: str = "cook/0.1 (https://github.com/cook-llm/cook; cook@example.org)"

    wikipedia_api_url: str = "https://en.wikipedia.org/w/api.php"
    wikipedia_dumps_url: str = "https://dumps.wikimedia.org"
    britannica_url: str = "https://www.britannica.com"
    youtube_api_url: str = "https://www.googleapis.com/youtube/v3"
    youtube_url: str = "https://www.youtube.com"
    hf_endpoint: str = "https://huggingface.co"

    # run the CPU-heavy stages on Dask: a scheduler address (tcp://host:8786), "local", or unset (flows/runners.py)
    dask_address: str | None = None
    # connection-level failures in a row (DNS, refused, TLS, timeout) after which a host counts as down (tasks/core/health.py)
    max_connect_failures: int = 5
    # every answer's size cap (decoded MiB) and overall deadline (s, beyond the per-read timeout) (tasks/core/http.py)
    max_response_mb: float = 64.0
    response_deadline_s: float = 300.0
    # how long a request waits for room in a full global limit on a Prefect server before the run keeps its own
    # limits for that host (tasks/core/limits.py)
    limit_wait_s: float = 300.0

    youtube_api_key: SecretStr | None = None
    hf_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _data_url(cls, values: Any) -> Any:
        from model import storage

        raw = str(values.get("data_dir") or "") if isinstance(values, dict) else ""
        if storage.is_remote(raw):
            url = raw.rstrip("/")
            values = {**values, "data_url": url, "data_dir": storage.cache_dir() / "data" / storage.cache_key(url)}
        elif raw.startswith("file://"):
            values = {**values, "data_dir": storage.local_path(raw)}
        return values

    def location(self, *parts: str) -> str:
        """Where a stage's files live under the data dir: a URL under COOK_DATA_DIR's URL, else a local path."""
        from model import storage

        return storage.join(self.data_url or str(self.data_dir), *parts)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def source_dirs(self) -> list[Path]:
        """The gathered-documents folders under the data dir that exist: what a merge takes by default."""
        return [self.data_dir / d for d in SOURCE_DIRS.values() if (self.data_dir / d).is_dir()]

    def source_locations(self) -> list[str]:
        """`source_dirs` as locations: the gathered-documents folders that exist under COOK_DATA_DIR, on its store
        when it is a URL. A source with no folder on the store counts from this machine's `data_dir` (`wiki-dump`
        writes there); one that has both counts once, from the store (the scrapers copy their folder there)."""
        if not self.data_url:
            return [str(p) for p in self.source_dirs()]
        from model import storage

        found = []
        for d in SOURCE_DIRS.values():
            if storage.isdir(self.location(d)):
                found.append(self.location(d))
            elif (self.data_dir / d).is_dir():
                found.append(str(self.data_dir / d))
        return found


# each source's folder under the data dir (the scrapers' and converters' default `out`)
SOURCE_DIRS = {"wikipedia": "wikipedia", "britannica": "britannica", "youtube": "youtube", "wiki-dump": "wikipedia-dump",
               "parquet": "cosmopedia", "pydoc": "pydoc"}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
