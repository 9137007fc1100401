"""Settings from the environment (prefix COOK_): data location and every external endpoint."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """cook's settings. Each endpoint is a setting so a mirror or a local test server can stand in."""

    model_config = SettingsConfigDict(env_prefix="COOK_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
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

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def source_dirs(self) -> list[Path]:
        """The gathered-documents folders under the data dir that exist: what a merge takes by default."""
        return [self.data_dir / d for d in SOURCE_DIRS.values() if (self.data_dir / d).is_dir()]


# each source's folder under the data dir (the scrapers' and converters' default `out`)
SOURCE_DIRS = {"wikipedia": "wikipedia", "britannica": "britannica", "youtube": "youtube", "wiki-dump": "wikipedia-dump",
               "parquet": "cosmopedia", "pydoc": "pydoc"}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
