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

    youtube_api_key: SecretStr | None = None
    hf_token: SecretStr | None = None

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
