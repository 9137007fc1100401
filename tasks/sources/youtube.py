"""YouTube transcripts of channels' uploads: the Data API v3 lists videos, youtube-transcript-api fetches captions.

- Listing (`list_channels`): `channels.list` (part=contentDetails,snippet) once per channel for its uploads
  playlist, then `playlistItems.list` (maxResults=50) page by page. Every page's videos go into the ledger
  (`OUT/ledger.sqlite`, tasks.sources.youtube_ledger) with the channel's next page token in one transaction, so a
  resumed run lists nothing twice. Each call costs 1 quota unit; the run's `quota` budget, or the API's 403
  quotaExceeded, stops the listing cleanly (what was found is still fetched).
- The API key is sent in the `X-goog-api-key` header, never in a URL, and is redacted from any API error
  text, so it reaches no log, artifact, ledger row or output. A key the API rejects (keyInvalid,
  API_KEY_INVALID, forbidden, accessNotConfigured, ...) raises `SourceUnavailable` at once: nothing more is tried.
- Dead hosts: connection-level failures (refused, DNS, TLS, timeouts) to the Data API and to youtube.com are
  counted per host in a row (tasks.core.health); at COOK_MAX_CONNECT_FAILURES the run stops with one line naming
  the host and its setting, and the videos not fetched stay pending.
- Fetching (`fetch_batch`): up to `concurrency` threads, one `YouTubeTranscriptApi` per thread, video starts
  within `rate_limit` per second. Captions: for each preferred language in order (`en` also matches `en-GB`,
  `en-US`, ...), manual ones before generated ones (`pick_transcript`). Transient failures are retried with
  backoff; the lasting ones are recorded: `unavailable` is never tried again, `disabled` and `no_transcript`
  are checked again after a growing delay (captions are added later), and `no_transcript` also when languages
  not tried before are asked for. Repeated RequestBlocked/IpBlocked backs off, then stops the run rather
  than burning the IP.
- Output: one document per video (`youtube:<id>`, one caption segment per line, non-speech cues such as
  [Music] dropped) in atomic parquet parts; videos are staged, the part written, then marked done, and
  `reconcile` repairs a crash in between.

Proxies and tuning come from the environment (`YouTubeOptions`, prefix COOK_YOUTUBE_).
"""

from __future__ import annotations

import html
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.atomic import clean_stale_temps
from model.errors import CookError, SourceUnavailable
from tasks.core import health
from tasks.corpus.documents import SCHEMA, now_utc, write_documents
from tasks.core.http import RETRY_STATUS, FetchError, PoliteClient, ResponseTooSlow, _answered, retry_after
from tasks.core.limits import host_of
from tasks.sources.youtube_ledger import RECHECKED, YouTubeLedger

SOURCE = "youtube"
LEDGER_NAME = "ledger.sqlite"
REFRESH_AFTER_S = 20 * 3600.0  # a listed channel is checked for new uploads once it is this old (a nightly run does)
SECRET_BLOCK = "youtube-api-key"
YOUTUBE = "https://www.youtube.com"
DOC_SCHEMA = pa.schema(list(SCHEMA) + [pa.field("channel", pa.string()), pa.field("language", pa.string()),
                                       pa.field("is_generated", pa.bool_())])
QUOTA_REASONS = {"quotaExceeded", "dailyLimitExceeded"}
RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}
# The key itself is refused: `error.errors[].reason` (v3's own) or `error.details[].reason` (google.rpc.ErrorInfo,
# with `status` INVALID_ARGUMENT / PERMISSION_DENIED). Any of these ends the run before transcript work.
KEY_REASONS = {"keyInvalid", "keyExpired", "forbidden", "accessNotConfigured", "ipRefererBlocked", "API_KEY_INVALID",
               "API_KEY_EXPIRED", "SERVICE_DISABLED", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
               "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED", "API_KEY_IOS_APP_BLOCKED"}
RECHECK_CAP_S = 30 * 86_400.0  # videos without captions are checked again at most this far apart
CHANNEL_ID = re.compile(r"UC[A-Za-z0-9_-]{22}")

# Educational channels (the original's sample, de-duplicated, plus a few more): lectures, science, maths, history.
DEFAULT_CHANNELS = [
    "UCYO_jab_esuFRV4b17AJtAw",  # 3Blue1Brown
    "UCHnyfMqiRRG1u-2MsSQLbXA",  # Veritasium
    "UCsXVk37bltHxD1rDPwtNM8Q",  # Kurzgesagt
    "UCX6b17PVsYBQ0ip5gyeme-Q",  # CrashCourse
    "UC4a-Gbdw7vOaccHmFo40b9g",  # Khan Academy
    "UCoxcjq-8xIDTYp3uz647V5A",  # Numberphile
    "UC9-y-6csu5WGm29I7JiwpnA",  # Computerphile
    "UCEBb1b_L6zDS3xTUrIALZOw",  # MIT OpenCourseWare
    "UCsooa4yRKGN_zEE8iknghZA",  # TED-Ed
    "UCAuUUnT6oDeKwE6v1NGQxug",  # TED
    "UC6107grRI4m0o2-emgoDnAA",  # SmarterEveryDay
    "UC6nSFpj9HTCZ5t-N3Rm3-HA",  # Vsauce
    "UCUHW94eEFW7hkUMVaZz4eDg",  # minutephysics
    "UCXUPKJO5MZQN11PqgIvyuvQ",  # Andrej Karpathy
    "UCbfYPyITQ-7l4upoX8nvctg",  # Two Minute Papers
    "UC7_gcs09iThXybpVgjHZ_7g",  # PBS Space Time
    "UCZYTClx2T1of7BRZ86-8fow",  # SciShow
    "UCvBqzzvUBLCs8Y7Axb-jZew",  # Sixty Symbols
    "UCtESv1e7ntJaLJYKIO1FoYw",  # Periodic Videos
    "UCSju5G2aFaWMqn-_0YBtq5A",  # Stand-up Maths
    "UCtYLUTtgS3k1Fg4y5tAhLbw",  # StatQuest
    "UCBa659QWEk1AI4Tg--mrJ2A",  # Tom Scott
]

# Non-speech cues: [Music], [Applause], (laughter), ♪ … ♪ and speaker arrows.
_CUES = re.compile(r"\[[^\]]*\]|\((?:music|applause|laughter|laughs|inaudible|silence|cheering|sighs?)\)|[♪♫♬][^♪♫♬\n]*[♪♫♬]|[♪♫♬]+|^\s*>>+",
                   re.IGNORECASE)


class YouTubeOptions(BaseSettings):
    """Proxies and tuning for the transcript fetcher, from the environment (COOK_YOUTUBE_...).

    A Webshare username/password wins over generic proxy URLs (which may hold a password: kept as secrets,
    redacted from every error text). Backoffs are in seconds."""

    model_config = SettingsConfigDict(env_prefix="COOK_YOUTUBE_", env_file=".env", extra="ignore")

    proxy_http: SecretStr | None = None
    proxy_https: SecretStr | None = None
    webshare_username: str | None = None
    webshare_password: SecretStr | None = None
    rate_limit: float = 2.0  # video fetches started per second at most (each is ~3 requests); 0: no rate limit
    timeout_s: float = 30.0  # per request; connecting gives up after min(10, this)
    retries: int = 3  # in-run retries of a transient failure
    retry_backoff_s: float = 2.0  # in-run backoff base; a later run waits backoff * 4**attempts (capped at a day)
    blocked_backoff_s: float = 60.0  # after the n-th block in a row, wait backoff * 2**(n-1)
    max_blocked: int = 4  # this many blocks in a row end the run
    part_docs: int = 50  # documents per parquet part (a kill loses at most this many fetches)


def default_out() -> Path:
    from tasks.core.settings import get_settings

    return get_settings().data_dir / "youtube"


def resolve_api_key() -> str | None:
    """The Data API key: COOK_YOUTUBE_API_KEY, else the Prefect Secret block `youtube-api-key`; None if neither."""
    from tasks.core.settings import Settings

    key = Settings().youtube_api_key  # fresh: the environment may change between runs in one process
    if key is not None and key.get_secret_value().strip():
        return key.get_secret_value().strip()
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(SECRET_BLOCK).get()
    except Exception:
        return None
    return str(value).strip() or None if value else None


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


# --- the Data API ----------------------------------------------------------------------------------


class QuotaExhausted(Exception):
    """The run's quota budget is spent, or the API answered quotaExceeded."""


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status, self.reason = status, reason


def api_error_reasons(body: Any) -> tuple[set[str], str, str]:
    """A Data API error body -> (every reason in it, the most telling one, its message). Reasons come from
    `error.errors[].reason` (v3's own), `error.details[].reason` (google.rpc.ErrorInfo) and `error.status`."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return set(), "", ""
    own = [e.get("reason") for e in err.get("errors") or [] if isinstance(e, dict) and e.get("reason")]
    info = [d.get("reason") for d in err.get("details") or [] if isinstance(d, dict) and d.get("reason")]
    status = err.get("status") if isinstance(err.get("status"), str) else ""
    reasons = {str(r) for r in own + info + [status] if r}
    # the key reasons of both kinds (accessNotConfigured/SERVICE_DISABLED); a specific ErrorInfo reason
    # (API_KEY_INVALID) says more than v3's generic one (badRequest)
    label = "/".join(dict.fromkeys(str(r) for r in own + info if r in KEY_REASONS)) or str((info or own or [status])[0] or "")
    return reasons, label, str(err.get("message") or "")


class DataAPI(PoliteClient):
    """YouTube Data API v3 calls within a quota budget: `call(endpoint, params)` -> JSON.

    Every request sent costs 1 unit (`units`); one that would pass `budget` raises QuotaExhausted instead.
    5xx/429 and rate-limit reasons are retried with backoff; quotaExceeded raises QuotaExhausted; a rejected
    key (KEY_REASONS) or a host found down raises SourceUnavailable; other errors raise ApiError. The key travels
    in a header that never follows a redirect to another origin (tasks.core.http); error texts are redacted."""

    def __init__(self, key: str, api_url: str | None = None, budget: int = 10_000, **kw: Any):
        from tasks.core.settings import get_settings

        kw.setdefault("rate_limit", 20.0)
        super().__init__(headers={"X-goog-api-key": key, "Accept": "application/json"}, **kw)
        self._key = key
        self.api_url = (api_url or get_settings().youtube_api_url).rstrip("/")
        self.budget, self.units = budget, 0

    def _error(self, r: httpx.Response) -> tuple[set[str], str, str]:
        try:
            reasons, label, message = api_error_reasons(r.json())
        except ValueError:
            reasons, label, message = set(), "", r.text[:200]
        return reasons, label, redact(" ".join(message.split())[:300], self._key)

    def call(self, endpoint: str, params: dict) -> dict:
        """GET one endpoint. Raises QuotaExhausted, ApiError, FetchError (retries spent), or SourceUnavailable
        when the key is rejected or the host is found down (COOK_MAX_CONNECT_FAILURES connection failures in a row)."""
        url = f"{self.api_url}/{endpoint}"
        reason = ""
        for attempt in range(self.retries + 1):
            if self.units + 1 > self.budget:
                raise QuotaExhausted(f"the run's quota budget of {self.budget} units is spent")
            health.check(url)
            wait = self._backoff(attempt)
            unreachable = False
            with self.limits.slot(url):
                self.units += 1
                self.stats["requests"] += 1
                try:
                    r = self.http.get(url, params=params)
                except ResponseTooSlow as e:
                    reason, r = str(e), None
                except FetchError:  # over the size cap, or a redirect refused (the key stays on its origin)
                    raise
                except httpx.TimeoutException as e:
                    reason, r, unreachable = f"timed out ({type(e).__name__})", None, not _answered(e)
                except httpx.TransportError as e:  # DNS, refused, TLS, reset, an incomplete body
                    reason, r, unreachable = redact(f"{type(e).__name__}: {e}", self._key), None, not _answered(e)
            if unreachable:
                health.failed(url, reason)  # raises SourceUnavailable once the host counts as down
            else:
                health.ok(url)
            if r is not None:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        reason = "invalid JSON body"
                else:
                    reasons, why, message = self._error(r)
                    if reasons & QUOTA_REASONS:
                        raise QuotaExhausted(f"the API's daily quota is exceeded ({why})")
                    if reasons & KEY_REASONS or r.status_code == 401:
                        raise SourceUnavailable(
                            f"the YouTube Data API at {host_of(url)} rejected the API key (HTTP {r.status_code} {why}: "
                            f"{message[:160]}); check COOK_YOUTUBE_API_KEY or the Prefect Secret block '{SECRET_BLOCK}'")
                    if r.status_code in RETRY_STATUS or reasons & RATE_REASONS:
                        reason = f"HTTP {r.status_code} {why}".strip()
                        after = retry_after(r.headers.get("Retry-After"))
                        if after is not None:
                            wait = self._hold(after)
                    else:
                        raise ApiError(r.status_code, why, message)
            if attempt < self.retries:
                self.stats["retries"] += 1
                time.sleep(wait)
        raise FetchError(f"{endpoint}: {reason} (after {self.retries + 1} tries)")


def _video(item: dict) -> dict | None:
    cd, sn = item.get("contentDetails") or {}, item.get("snippet") or {}
    vid = cd.get("videoId") or (sn.get("resourceId") or {}).get("videoId")
    if not vid:
        return None
    return {"video_id": vid, "title": sn.get("title"), "published_at": cd.get("videoPublishedAt") or sn.get("publishedAt")}


def list_channel(api: DataAPI, ledger: YouTubeLedger, channel_id: str, refresh_after: float | None = None) -> dict:
    """List one channel's uploads into the ledger, from where an earlier run stopped; a channel listed to the end
    more than `refresh_after` seconds ago is checked for new uploads (None: never). Returns
    {channel, state (listed | refreshed | listed-before | no-uploads | not-found | failed), new}."""
    ch = ledger.channel(channel_id)
    if ch and ch["listed"]:
        if ch["uploads"] and refresh_after is not None:
            return _refresh(api, ledger, ch, refresh_after)
        return {"channel": channel_id, "state": "listed-before", "new": 0}
    if not ch or not ch["uploads"]:
        data = api.call("channels", {"part": "contentDetails,snippet", "id": channel_id, "maxResults": "1"})
        items = data.get("items") or []
        if not items:
            ledger.set_channel(channel_id, None, None, listed=True, error="channel not found")
            return {"channel": channel_id, "state": "not-found", "new": 0}
        uploads = ((items[0].get("contentDetails") or {}).get("relatedPlaylists") or {}).get("uploads")
        ledger.set_channel(channel_id, (items[0].get("snippet") or {}).get("title"), uploads, listed=not uploads)
        if not uploads:
            return {"channel": channel_id, "state": "no-uploads", "new": 0}
        ch = ledger.channel(channel_id)
    assert ch is not None
    token, new, newest = ch["page_token"], 0, None
    while True:
        try:
            data = _uploads_page(api, ch["uploads"], token)
        except ApiError as e:
            if e.status == 404:  # a channel that never uploaded has no uploads playlist
                ledger.add_page(channel_id, [], None)
                return {"channel": channel_id, "state": "no-uploads", "new": new}
            raise
        videos = [v for v in map(_video, data.get("items") or []) if v]
        if token is None:
            newest = [v["video_id"] for v in videos]  # the playlist is newest first
        token = data.get("nextPageToken") or None
        new += ledger.add_page(channel_id, videos, token)
        if token is None:
            if newest is not None:
                ledger.set_frontier(channel_id, newest)
            return {"channel": channel_id, "state": "listed" if new or videos else "no-uploads", "new": new}


def _uploads_page(api: DataAPI, playlist: str, token: str | None) -> dict:
    params = {"part": "snippet,contentDetails", "playlistId": playlist, "maxResults": "50"}
    if token:
        params["pageToken"] = token
    return api.call("playlistItems", params)


def _refresh(api: DataAPI, ledger: YouTubeLedger, ch: dict, refresh_after: float) -> dict:
    """New uploads of a listed channel: pages from the newest down to the first that holds a video of the last
    complete listing (its frontier), so a nightly run spends about one unit per channel. The frontier moves only
    when a refresh completes: one cut short by the quota starts again from the top and walks further next time."""
    cid = ch["channel_id"]
    frontier = ledger.frontier(cid)
    since = frontier["at"] if frontier else ch["updated_at"]
    if time.time() - since < refresh_after:
        return {"channel": cid, "state": "listed-before", "new": 0}
    stop = set(frontier["ids"]) if frontier else {v["video_id"] for v in ledger.videos() if v["channel_id"] == cid}
    token, new, newest = None, 0, None
    while True:
        try:
            data = _uploads_page(api, ch["uploads"], token)
        except ApiError as e:
            if e.status == 404:  # the uploads are gone: nothing new
                ledger.set_frontier(cid, [])
                return {"channel": cid, "state": "refreshed", "new": new}
            raise
        videos = [v for v in map(_video, data.get("items") or []) if v]
        newest = newest if newest is not None else [v["video_id"] for v in videos]
        new += ledger.add_page(cid, videos, None, refresh=True)
        token = data.get("nextPageToken") or None
        if token is None or any(v["video_id"] in stop for v in videos):
            ledger.set_frontier(cid, newest)
            return {"channel": cid, "state": "refreshed", "new": new}


def list_channels(channels: list[str], out: str | Path, quota: int = 10_000, api_url: str | None = None,
                  key: str | None = None, refresh_after: float | None = REFRESH_AFTER_S, remote: str | None = None,
                  **client_kw: Any) -> dict:
    """List every channel's uploads into `OUT/ledger.sqlite` within `quota` units; channels listed more than
    `refresh_after` seconds ago are checked for new uploads. A channel that fails is reported and the others
    go on (`transient` says whether retrying may help); the quota ends the listing cleanly; a rejected key or
    the API's host found down raises SourceUnavailable. With `remote`, the ledger is copied there at the end
    (tasks/core/mirror.py). Returns {units, stopped (None | "quota"), message,
    per_channel, new}."""
    key = key or resolve_api_key()
    if not key:
        raise CookError(f"no YouTube API key: set COOK_YOUTUBE_API_KEY or a Prefect Secret block '{SECRET_BLOCK}'")
    rows, stopped, message, total = [], None, "", None
    api = DataAPI(key, api_url, budget=quota, **client_kw)
    try:
        with YouTubeLedger(Path(out) / LEDGER_NAME) as ledger:
            try:
                for cid in channels:
                    try:
                        rows.append(list_channel(api, ledger, cid, refresh_after))
                    except (ApiError, FetchError) as e:  # FetchError: retries spent on a transient error
                        rows.append({"channel": cid, "state": "failed", "new": 0, "error": redact(str(e), key),
                                     "transient": not isinstance(e, ApiError)})
            except QuotaExhausted as e:
                stopped, message = "quota", f"listing stopped: {e}; a later run goes on from here"
            finally:
                total = ledger.add_units(api.units) if api.units else None
                if remote:
                    from tasks.core.mirror import Mirror

                    Mirror(out, remote).push_ledger(ledger)
    finally:
        api.close()
    return {"units": api.units, "units_all_runs": total, "stopped": stopped, "message": message, "per_channel": rows,
            "new": sum(r["new"] for r in rows)}


# --- transcripts -----------------------------------------------------------------------------------


def clean_segments(texts: list[str]) -> str:
    """Caption segments -> text: one segment per line, whitespace collapsed, non-speech cues dropped."""
    lines = []
    for t in texts:
        t = " ".join(_CUES.sub(" ", html.unescape(t)).split())
        if t:
            lines.append(t)
    return "\n".join(lines)


def proxy_config(opts: YouTubeOptions):
    """A youtube-transcript-api ProxyConfig from the options, or None."""
    from youtube_transcript_api.proxies import GenericProxyConfig, WebshareProxyConfig

    if opts.webshare_username and opts.webshare_password:
        return WebshareProxyConfig(proxy_username=opts.webshare_username,
                                   proxy_password=opts.webshare_password.get_secret_value())
    if opts.proxy_http or opts.proxy_https:
        return GenericProxyConfig(http_url=opts.proxy_http.get_secret_value() if opts.proxy_http else None,
                                  https_url=opts.proxy_https.get_secret_value() if opts.proxy_https else None)
    return None


def connection_failure(exc: BaseException) -> str | None:
    """A one-line reason when `exc` is a connection-level failure (no answer came back: DNS, refused, reset,
    TLS, proxy, timeout), else None."""
    import requests

    if isinstance(exc, requests.Timeout):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ProxyError):
        return "ProxyError: cannot use the proxy (COOK_YOUTUBE_PROXY_HTTP/HTTPS or COOK_YOUTUBE_WEBSHARE_*)"
    if isinstance(exc, requests.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] [^'\")\]]*|Name or service not known|Connection refused|Connection reset[^'\")]*", str(exc))
        return f"{type(exc).__name__}: {found.group(0).strip()}" if found else type(exc).__name__
    return None


def _adapter_class():
    from requests.adapters import HTTPAdapter

    class YouTubeAdapter(HTTPAdapter):
        """Default timeouts on every request (connect, read); requests to https://www.youtube.com go to `base` (a mirror
        or a test server). Each request counts for its host's health (tasks.core.health): an answer resets the
        count, a connection-level failure adds one, and at the limit SourceUnavailable stops the run."""

        def __init__(self, base: str | None, timeout: float, secrets: tuple[str, ...] | list[str] = (), **kw: Any):
            self.base, self.timeout, self.secrets = base, (min(10.0, timeout), timeout), list(secrets)
            super().__init__(**kw)

        def send(self, request, timeout=None, **kw):  # type: ignore[override]
            if self.base and request.url.startswith(YOUTUBE):
                request.url = self.base + request.url[len(YOUTUBE):]
            health.check(request.url)
            try:
                r = super().send(request, timeout=timeout or self.timeout, **kw)
            except Exception as e:
                why = connection_failure(e)
                if why is not None:
                    for secret in self.secrets:
                        why = redact(why, secret)
                    health.failed(request.url, why)  # raises once the host counts as down
                raise
            health.ok(request.url)
            return r

    return YouTubeAdapter


def make_transcript_api(opts: YouTubeOptions, youtube_url: str | None = None):
    """One YouTubeTranscriptApi (not thread-safe: one per thread) on its own requests.Session."""
    import requests
    from urllib3 import Retry as UrlRetry
    from youtube_transcript_api import YouTubeTranscriptApi

    from tasks.core.settings import get_settings

    base = (youtube_url or get_settings().youtube_url).rstrip("/")
    base = None if base == YOUTUBE else base
    session = requests.Session()
    if base:
        session.trust_env = False  # a mirror or test server: no proxy from the environment
    proxies = proxy_config(opts)
    api = YouTubeTranscriptApi(proxy_config=proxies, http_client=session)
    retries = UrlRetry(total=proxies.retries_when_blocked, status_forcelist=[429]) if proxies and proxies.retries_when_blocked else 0
    adapter = _adapter_class()(base, opts.timeout_s, _proxy_secrets(opts), max_retries=retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return api


def language_rank(code: str, languages: list[str]) -> tuple[int, int] | None:
    """Where a track's language code stands in the preferred `languages`: (index, 0 exact | 1 regional), None
    when it matches none. `en` matches `en`, then `en-GB`, `en-US`, ...; `en-GB` matches itself and its own
    subtags (`en-GB-oxendict`), not `en`."""
    code = code.lower()
    for i, lang in enumerate(languages):
        lang = lang.lower()
        if code == lang:
            return i, 0
        if code.startswith(lang + "-"):
            return i, 1
    return None


def pick_transcript(transcripts, languages: list[str]):
    """The track to fetch: the first preferred language that has one; within it manual before generated, an
    exact code before a regional one. Raises NoTranscriptFound when no track matches."""
    from youtube_transcript_api import NoTranscriptFound

    ranked = []
    for tr in transcripts:
        rank = language_rank(tr.language_code, languages)
        if rank is not None:
            ranked.append(((rank[0], bool(tr.is_generated), rank[1], tr.language_code), tr))
    if not ranked:
        raise NoTranscriptFound(getattr(transcripts, "video_id", ""), languages, transcripts)
    return min(ranked, key=lambda x: x[0])[1]


def fetch_transcript(api, video_id: str, languages: list[str]) -> tuple[str, str, bool]:
    """(text, language code, is_generated) of a video's captions, chosen by `pick_transcript`. Raises the
    library's errors."""
    tr = pick_transcript(api.list(video_id), languages)
    fetched = tr.fetch()
    return clean_segments([s.text for s in fetched]), tr.language_code, tr.is_generated


def classify(exc: BaseException) -> tuple[str, bool, str]:
    """An exception from fetching -> (ledger state, retry now?, one-line reason)."""
    import requests
    import youtube_transcript_api as yta

    name = type(exc).__name__
    if isinstance(exc, yta.RequestBlocked):  # IpBlocked included
        return "blocked", False, name
    if isinstance(exc, yta.TranscriptsDisabled):
        return "disabled", False, name
    if isinstance(exc, yta.NoTranscriptFound):
        return "no_transcript", False, name
    if isinstance(exc, (yta.VideoUnavailable, yta.InvalidVideoId, yta.AgeRestricted, yta.VideoUnplayable)):
        return "unavailable", False, name
    if isinstance(exc, yta.YouTubeRequestFailed):
        return "error", True, f"{name}: {getattr(exc, 'reason', '')}"[:300]
    if isinstance(exc, (requests.RequestException, yta.YouTubeDataUnparsable, yta.FailedToCreateConsentCookie)):
        return "error", True, f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if isinstance(exc, yta.CouldNotRetrieveTranscript):  # PoTokenRequired and future kinds: a later run retries
        return "error", False, name
    return "error", True, f"{name}: {exc}"[:300]


def _proxy_secrets(opts: YouTubeOptions) -> list[str]:
    """Proxy passwords (and the URLs that hold them), to redact from error texts."""
    from urllib.parse import unquote, urlparse

    found = [opts.webshare_password.get_secret_value()] if opts.webshare_password else []
    for u in (opts.proxy_http, opts.proxy_https):
        if u is not None:
            url = u.get_secret_value()
            password = urlparse(url).password
            found += [url, password, unquote(password)] if password else []
    return sorted({s for s in found if s}, key=len, reverse=True)  # the whole URL before its password


class BlockGuard:
    """Counts RequestBlocked in a row across threads: backs off after each, and past `limit` stops the run."""

    def __init__(self, limit: int, backoff: float, streak: int = 0):
        self.limit, self.backoff, self.streak = limit, backoff, streak
        self.stop = threading.Event()
        self._lock = threading.Lock()
        if streak >= limit:
            self.stop.set()

    def ok(self) -> None:
        with self._lock:
            self.streak = 0

    def blocked(self) -> None:
        with self._lock:
            self.streak += 1
            n = self.streak
        if n >= self.limit:
            self.stop.set()
        else:
            self.stop.wait(self.backoff * 2 ** (n - 1))


def reconcile(out: str | Path, exists: Callable[[str], bool] | None = None) -> dict:
    """Bring the ledger in line with the parts on disk: temp files removed; staged videos found in their part
    become done, the others pending (a crash); done videos whose part file is gone (from `out`, and from where
    `exists(part name)` also looks: the data store's copy) go back to pending (an output deleted by hand is
    re-made, and only what was lost). Returns {recovered, reset, released}."""
    out = Path(out)
    clean_stale_temps(out)
    with YouTubeLedger(out / LEDGER_NAME) as ledger:
        written: dict[str, str] = {}
        for name in ledger.staged_parts():
            if (out / name).is_file():
                for doc_id in pq.read_table(out / name, columns=["id"]).column("id").to_pylist():
                    written[doc_id.split(":", 1)[1]] = name
        recovered, reset = ledger.reconcile(written)
        released = ledger.release_missing(exists or (lambda part: (out / part).is_file()))
    return {"recovered": recovered, "reset": reset, "released": released}


def recheck_delay(misses: int, recheck_after: float | None) -> float:
    """Seconds until a video found without captions `misses` times in a row is checked again:
    `recheck_after`, doubling with each miss, at most RECHECK_CAP_S (None: never again)."""
    if recheck_after is None:
        return float("inf")
    return min(RECHECK_CAP_S, recheck_after * 2 ** max(0, misses - 1))


def fetch_batch(video_ids: list[str], out: str | Path, languages: list[str], concurrency: int = 4,
                blocked_streak: int = 0, opts: YouTubeOptions | None = None, youtube_url: str | None = None,
                on_video: Callable[[], None] | None = None, rate: float | None = None,
                recheck_after: float | None = REFRESH_AFTER_S, remote: str | None = None) -> dict:
    """Fetch these videos' transcripts with `concurrency` threads, starting at most `rate` videos per second
    (None: COOK_YOUTUBE_RATE_LIMIT; 0: unlimited), into parquet parts under `out`, recording each outcome in the
    ledger; videos without captions are checked again after `recheck_delay(misses, recheck_after)`. Returns
    {fetched, failed: {state: n}, skipped, blocked_streak, stopped}. Raises SourceUnavailable when youtube.com
    cannot be reached: what was fetched is written, the videos not fetched stay as they were (pending). With
    `remote`, every part and then the ledger are copied there (tasks/core/mirror.py)."""
    from tasks.core.limits import HostLimits
    from tasks.core.settings import get_settings

    opts = opts or YouTubeOptions()
    out = Path(out)
    guard = BlockGuard(opts.max_blocked, opts.blocked_backoff_s, blocked_streak)
    site = youtube_url or get_settings().youtube_url
    rate = opts.rate_limit if rate is None else rate
    limits = HostLimits(concurrency, rate or None)  # plus youtube.com's global limits across runs (tasks/core/limits.py)
    local = threading.local()
    proxy_secrets = _proxy_secrets(opts)
    failed: dict[str, int] = {}
    fetched = skipped = 0
    mirror = None
    if remote:
        from tasks.core.mirror import Mirror

        mirror = Mirror(out, remote)
    with YouTubeLedger(out / LEDGER_NAME) as ledger:
        rows = {v: ledger.video(v) for v in video_ids}
        buffer: list[dict] = []

        def flush() -> None:
            nonlocal buffer, fetched
            if not buffer:
                return
            part = f"{SOURCE}-{uuid.uuid4().hex[:16]}.parquet"
            ids = [d["id"].split(":", 1)[1] for d in buffer]
            ledger.stage(ids, part, {i: (d["language"], d["is_generated"]) for i, d in zip(ids, buffer)}, languages)
            write_documents(out / part, buffer, DOC_SCHEMA)
            ledger.mark_done(ids)
            if mirror is not None:
                mirror.push(out / part, ledger)
            fetched += len(buffer)
            buffer = []

        def one(vid: str) -> dict:
            # a connection-level failure is retried until the host counts as down (SourceUnavailable), within a bound
            tries, conn_tries = opts.retries + 1, opts.retries + 1 + health.limit()
            attempt = 0
            while True:
                if guard.stop.is_set():
                    return {"video_id": vid, "state": "skipped"}
                if not hasattr(local, "api"):
                    local.api = make_transcript_api(opts, youtube_url)
                try:
                    with limits.slot(site):
                        text, lang, gen = fetch_transcript(local.api, vid, languages)
                except SourceUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure is classified and recorded
                    state, again, reason = classify(e)
                    attempt += 1
                    if again and attempt < (conn_tries if connection_failure(e) else tries) and not guard.stop.is_set():
                        guard.stop.wait(opts.retry_backoff_s * 2 ** min(attempt - 1, 6) * (0.5 + random.random()))
                        continue
                    if state == "blocked":
                        guard.blocked()
                    for secret in proxy_secrets:
                        reason = redact(reason, secret)
                    return {"video_id": vid, "state": state, "error": reason, "attempts": attempt}
                guard.ok()
                if not text:
                    return {"video_id": vid, "state": "no_transcript", "error": "only non-speech cues"}
                return {"video_id": vid, "state": "done", "text": text, "language": lang, "is_generated": gen}

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="youtube") as pool:
            try:
                for r in pool.map(one, [v for v in video_ids if rows.get(v)]):
                    vid, row = r["video_id"], rows[r["video_id"]]
                    if r["state"] == "done":
                        buffer.append({"id": f"{SOURCE}:{vid}", "source": SOURCE, "url": f"{YOUTUBE}/watch?v={vid}",
                                       "title": row["title"] or "", "text": r["text"], "fetched_at": now_utc(),
                                       "channel": row["channel_id"], "language": r["language"], "is_generated": r["is_generated"]})
                        if len(buffer) >= opts.part_docs:
                            flush()
                    elif r["state"] == "skipped":
                        skipped += 1
                    else:
                        if r["state"] == "blocked":
                            retry_in = 0.0
                        elif r["state"] in RECHECKED:  # captions may come later: check again after a growing delay
                            retry_in = recheck_delay((row["misses"] or 0) + 1, recheck_after)
                        else:
                            retry_in = min(86_400.0, opts.retry_backoff_s * 4 ** (row["attempts"] + 1))
                        ledger.mark_failed(vid, r["state"], r["error"], min(retry_in, 10 * 365 * 86_400.0), languages)
                        failed[r["state"]] = failed.get(r["state"], 0) + 1
                    if on_video is not None and r["state"] != "skipped":
                        on_video()
            except BaseException:
                guard.stop.set()  # stopped (a dead host, an interrupt): the videos not started yet return at once
                raise
            finally:
                flush()
                if mirror is not None:  # the failures recorded since the last part
                    mirror.push_ledger(ledger)
    stopped = "blocked" if guard.stop.is_set() else None
    return {"fetched": fetched, "failed": failed, "skipped": skipped, "blocked_streak": guard.streak, "stopped": stopped}


# --- arguments and Prefect tasks -------------------------------------------------------------------


def read_channels_file(path: str) -> list[str]:
    """One channel id a line; blank lines and `#` comments (whole-line or after an id) skipped."""
    from tasks.sources.crawl import read_list_file

    return read_list_file(path, "channels", "channel ids", inline_comments=True)


def check_scrape_youtube_args(channels: list[str] | None = None, channels_file: str | None = None,
                              languages: list[str] | None = None, out: str | None = None, concurrency: int = 4,
                              quota: int = 10_000, batch_size: int = 200) -> tuple[list[str], list[str]]:
    """Validate before anything runs; return (channel ids, languages): the given channels then the file's,
    de-duplicated, or the built-in list."""
    from urllib.parse import urlparse

    from tasks.core.settings import get_settings

    ids = [c.strip() for c in (channels or [])]
    if channels_file:
        ids += read_channels_file(channels_file)
    for c in ids:
        if not CHANNEL_ID.fullmatch(c):
            raise CookError(f"not a YouTube channel id (UC + 22 characters): {c!r}")
    ids = list(dict.fromkeys(ids)) or list(DEFAULT_CHANNELS)
    langs = [lang.strip() for lang in (languages or ["en"]) if lang.strip()]
    if not langs or any(not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", lang) for lang in langs):
        raise CookError(f"--languages must be language codes such as en,de (got {','.join(languages or []) or 'nothing'})")
    if not 1 <= concurrency <= 32:
        raise CookError(f"--concurrency must be between 1 and 32 (got {concurrency})")
    if quota < 1:
        raise CookError(f"--quota must be at least 1 unit (got {quota})")
    if batch_size < 1:
        raise CookError(f"batch size must be at least 1 (got {batch_size})")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CookError(f"--out {out} is a file, not a folder")
    for name, url in (("COOK_YOUTUBE_API_URL", get_settings().youtube_api_url), ("COOK_YOUTUBE_URL", get_settings().youtube_url)):
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise CookError(f"{name} is not an http(s) URL: {url}")
    if not resolve_api_key():
        raise CookError(f"no YouTube API key: set COOK_YOUTUBE_API_KEY or a Prefect Secret block '{SECRET_BLOCK}'")
    return ids, langs


@task(name="list-youtube-channels", retries=0)
def list_channels_task(channels: list[str], out: str, quota: int, api_url: str,
                       refresh_after: float | None = REFRESH_AFTER_S, remote: str | None = None) -> dict:
    """Prefect wrapper of `list_channels` (the key is resolved inside: it is never a task parameter)."""
    return list_channels(channels, out, quota, api_url, refresh_after=refresh_after, remote=remote)


# Progress bars of running flows, by output folder: batch tasks run in the flow's process and advance it.
RUN_BARS: dict[str, Any] = {}


@task(name="fetch-youtube-batch", retries=0)
def fetch_batch_task(video_ids: list[str], out: str, languages: list[str], concurrency: int = 4,
                     blocked_streak: int = 0, recheck_after: float | None = REFRESH_AFTER_S, remote: str | None = None) -> dict:
    """Prefect wrapper of `fetch_batch`: one batch of videos, the overall progress bar moved per video."""
    bar = RUN_BARS.get(out)
    return fetch_batch(video_ids, out, languages, concurrency, blocked_streak,
                       on_video=(lambda: bar.advance(1)) if bar is not None else None, recheck_after=recheck_after,
                       remote=remote)
