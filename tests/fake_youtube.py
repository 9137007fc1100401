"""A loopback stand-in for YouTube: the Data API v3 (`/youtube/v3/channels`, `/youtube/v3/playlistItems`) and the
pages youtube-transcript-api 1.x reads (`/watch?v=ID` with INNERTUBE_API_KEY, `POST /youtubei/v1/player`,
`/api/timedtext` XML), in the real shapes.

- Data API: the key must come in the `X-goog-api-key` header (otherwise 400 API_KEY_INVALID in today's shape,
  or `key_error="keyInvalid"` for the older v3 one; a key in the URL is counted in `key_in_url`); `deny` makes
  every call answer one of the errors Google gives for a refused key (`DENIALS`: API_KEY_INVALID, keyInvalid,
  accessNotConfigured, forbidden), in the real shapes; `maxResults=50` pages with `nextPageToken`; a channel
  with no uploads answers 404 playlistNotFound; `quota_limit` units, then 403 quotaExceeded; `flaky_api`
  answers each endpoint's first request 503; `echo_key_channels` answer 400 with the key inside the error
  message (a hostile server).
- Videos by kind: `ok` (manual English + German captions), `generated` (asr English + manual French),
  `regional` (asr English + manual British English), `flaky` (the player answers 503 twice first), `disabled`
  (no captions), `missing` (French only), `unavailable`, `age` (age-restricted), `blocked` (LOGIN_REQUIRED bot
  check), `music` (only non-speech cues). A kind can change between runs (a video gains captions). Each track
  has its own text: the kind's first choice for `en` (`TRACKS`, marked primary) gives `expected_text()`, any
  other track the same lines marked with its language (`text_of`). `block_all` answers every watch page 429.
- Counters: `channel_calls[channel]`, `page_calls[(playlist, token)]`, `timedtext_counts[video]`,
  `player_calls[video]`, `units`; `log`: every request as (monotonic time, method, path?query).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

INNERTUBE_KEY = "AIzaFakeInnertubeKey_0123456789"
FETCHABLE = ("ok", "generated", "flaky", "regional")
# caption tracks by kind: (language code, generated); the first is the primary one (what `en` should pick)
TRACKS = {"ok": [("en", False), ("de", False)], "flaky": [("en", False), ("de", False)], "music": [("en", False)],
          "generated": [("en", True), ("fr", False)], "missing": [("fr", False)],
          "regional": [("en-GB", False), ("en", True), ("en-US", True)]}
DENIALS = ("API_KEY_INVALID", "keyInvalid", "accessNotConfigured", "forbidden")
CUES = ("[Music]", "[Applause]", "♪ la la la ♪")
WORDS = "river energy quantum protein island climate ocean theory café naïve Zürich 東京 fifty-two it's".split()


@dataclass
class Video:
    video_id: str
    channel: str
    title: str
    kind: str
    segments: list[str] = field(default_factory=list)

    def expected_text(self) -> str:
        return "\n".join(s.replace("[Laughter] ", "") for s in self.segments if s not in CUES)

    def tracks(self) -> list[tuple[str, bool]]:
        return TRACKS.get(self.kind, [])

    def segments_of(self, lang: str, asr: bool) -> list[str]:
        """The track's caption lines: the primary track's as they are, another track's marked with its language."""
        if (lang, asr) == self.tracks()[0]:
            return self.segments
        return [s if s in CUES else f"{s} ~{lang}{'-auto' if asr else ''}" for s in self.segments]

    def text_of(self, lang: str, asr: bool) -> str:
        return "\n".join(s.replace("[Laughter] ", "") for s in self.segments_of(lang, asr) if s not in CUES)


@dataclass
class Channel:
    channel_id: str
    title: str
    videos: list[str]
    uploads: bool = True  # False: no uploads playlist (404 playlistNotFound)


def channel_id(i: int) -> str:
    return f"UC{'fake' + str(i).zfill(4):_<22}"[:24]


class FakeWorld:
    """Channels and videos. `kinds` is cycled over each channel's videos."""

    def __init__(self, n_channels: int = 3, videos_per_channel: int = 20, kinds: tuple[str, ...] | None = None,
                 big: int = 0, empty_channel: bool = True):
        kinds = kinds or ("ok", "ok", "generated", "ok", "flaky", "disabled", "ok", "missing", "unavailable", "ok",
                          "age", "ok", "music", "generated", "blocked")
        self.channels: dict[str, Channel] = {}
        self.videos: dict[str, Video] = {}
        k = 0
        for c in range(n_channels):
            cid = channel_id(c)
            n = videos_per_channel + (big if c == 0 else 0)
            vids = []
            for j in range(n):
                vid = f"v{c:02d}x{j:05d}ab"[:11]
                kind = kinds[k % len(kinds)]
                k += 1
                segs = [f"segment {i} of {vid}: " + " ".join(WORDS[(i + j + w) % len(WORDS)] for w in range(5)) for i in range(4)]
                if kind == "music":
                    segs = ["[Music]", "♪ la la la ♪"]
                else:
                    segs = ["[Music]", segs[0], "[Applause]", "[Laughter] " + segs[1], *segs[2:]]
                self.videos[vid] = Video(vid, cid, f"Video {j} of channel {c} – {kind}", kind, segs)
                vids.append(vid)
            self.channels[cid] = Channel(cid, f"Channel {c}", vids)
        if empty_channel:
            cid = channel_id(n_channels)
            self.channels[cid] = Channel(cid, "Empty channel", [], uploads=False)

    def fetchable(self) -> set[str]:
        return {v for v, x in self.videos.items() if x.kind in FETCHABLE}

    def of_kind(self, *kinds: str) -> set[str]:
        return {v for v, x in self.videos.items() if x.kind in kinds}


class FakeYouTube:
    """Serve a FakeWorld on 127.0.0.1. Use as a context manager; `url` is the YouTube base, `api_url` the Data API's."""

    def __init__(self, world: FakeWorld, key: str = "AIzaSyFAKE-the-secret-key-0000000000", quota_limit: int | None = None,
                 caption_latency: float = 0.0, flaky_api: bool = False, echo_key_channels: set[str] | None = None,
                 block_all: bool = False, key_error: str = "API_KEY_INVALID", deny: str | None = None):
        assert key_error in DENIALS and (deny is None or deny in DENIALS)
        self.world, self.key = world, key
        self.key_error, self.deny = key_error, deny
        self.log: list[tuple[float, str, str]] = []
        self.quota_limit, self.caption_latency = quota_limit, caption_latency
        self.flaky_api, self.echo_key_channels, self.block_all = flaky_api, set(echo_key_channels or ()), block_all
        self.channel_calls: Counter = Counter()
        self.page_calls: Counter = Counter()
        self.timedtext_counts: Counter = Counter()
        self.player_calls: Counter = Counter()
        self.units = 0
        self.key_in_url = 0
        self.bad_max_results = 0
        self._api_seen: Counter = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.api_url = self.url + "/youtube/v3"

    def __enter__(self) -> "FakeYouTube":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-youtube", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # --- answers -----------------------------------------------------------------------------------

    @staticmethod
    def denial(kind: str) -> tuple[int, dict]:
        """What the Data API answers when it refuses the key, as Google sends it."""
        info = "type.googleapis.com/google.rpc.ErrorInfo"
        if kind == "keyInvalid":  # the older v3 shape: the reason only in errors[]
            return 400, {"error": {"errors": [{"domain": "usageLimits", "reason": "keyInvalid", "message": "Bad Request"}],
                                   "code": 400, "message": "Bad Request"}}
        if kind == "API_KEY_INVALID":  # today's: errors[] says only badRequest, details[] says why
            m = "API key not valid. Please pass a valid API key."
            return 400, {"error": {"code": 400, "message": m, "errors": [{"message": m, "domain": "global", "reason": "badRequest"}],
                                   "status": "INVALID_ARGUMENT",
                                   "details": [{"@type": info, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                                                "metadata": {"service": "youtube.googleapis.com"}},
                                               {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": m}]}}
        if kind == "accessNotConfigured":  # the API is not enabled in the key's project
            help_url = "https://console.developers.google.com/apis/api/youtube.googleapis.com/overview?project=123456789012"
            m = (f"YouTube Data API v3 has not been used in project 123456789012 before or it is disabled. Enable it by visiting "
                 f"{help_url} then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.")
            return 403, {"error": {"code": 403, "message": m,
                                   "errors": [{"message": m, "domain": "usageLimits", "reason": "accessNotConfigured", "extendedHelp": help_url}],
                                   "status": "PERMISSION_DENIED",
                                   "details": [{"@type": info, "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
                                                "metadata": {"consumer": "projects/123456789012", "service": "youtube.googleapis.com"}}]}}
        # "forbidden": the key's API restrictions do not allow this API
        m = "Requests to this API youtube method youtube.api.v3.V3DataChannelService.List are blocked."
        return 403, {"error": {"code": 403, "message": m, "errors": [{"message": m, "domain": "global", "reason": "forbidden"}],
                               "status": "PERMISSION_DENIED",
                               "details": [{"@type": info, "reason": "API_KEY_SERVICE_BLOCKED", "domain": "googleapis.com",
                                            "metadata": {"service": "youtube.googleapis.com", "consumer": "projects/123456789012"}}]}}

    def _api(self, h, path: str, q: dict, headers) -> tuple[int, dict]:
        def error(code: int, reason: str, message: str) -> tuple[int, dict]:
            return code, {"error": {"code": code, "message": message, "errors": [{"reason": reason, "domain": "youtube", "message": message}]}}

        if "key" in q:
            self.key_in_url += 1
        if self.deny:
            return self.denial(self.deny)
        if headers.get("X-goog-api-key") != self.key:
            return self.denial(self.key_error)
        endpoint = path.rsplit("/", 1)[-1]
        with self._lock:
            self._api_seen[endpoint] += 1
            first = self._api_seen[endpoint] == 1
            if self.quota_limit is not None and self.units >= self.quota_limit:
                return error(403, "quotaExceeded", "The request cannot be completed because you have exceeded your quota.")
            self.units += 1
        if self.flaky_api and first:
            return error(503, "backendError", "Backend Error")
        if endpoint == "channels":
            cid = q.get("id", "")
            if cid in self.echo_key_channels:
                return error(400, "badRequest", f"Invalid request for key={self.key} (channel {cid})")
            with self._lock:
                self.channel_calls[cid] += 1
            ch = self.world.channels.get(cid)
            if ch is None:
                return 200, {"kind": "youtube#channelListResponse", "pageInfo": {"totalResults": 0, "resultsPerPage": 5}}
            return 200, {"kind": "youtube#channelListResponse", "items": [{
                "kind": "youtube#channel", "id": cid, "snippet": {"title": ch.title, "description": ""},
                "contentDetails": {"relatedPlaylists": {"likes": "", "uploads": "UU" + cid[2:]}}}]}
        if endpoint == "playlistItems":
            pl, token = q.get("playlistId", ""), q.get("pageToken", "")
            if q.get("maxResults") != "50":
                self.bad_max_results += 1
            with self._lock:
                self.page_calls[(pl, token)] += 1
            ch = self.world.channels.get("UC" + pl[2:])
            if ch is None or not ch.uploads:
                return error(404, "playlistNotFound", "The playlist identified with the request's playlistId parameter cannot be found.")
            start = int(token[3:]) if token else 0
            vids = ch.videos[start : start + 50]
            body = {"kind": "youtube#playlistItemListResponse", "pageInfo": {"totalResults": len(ch.videos), "resultsPerPage": 50},
                    "items": [{"kind": "youtube#playlistItem", "id": f"item-{v}",
                               "snippet": {"title": self.world.videos[v].title, "channelId": ch.channel_id,
                                           "resourceId": {"kind": "youtube#video", "videoId": v}},
                               "contentDetails": {"videoId": v, "videoPublishedAt": "2024-01-01T00:00:00Z"}} for v in vids]}
            if start + 50 < len(ch.videos):
                body["nextPageToken"] = f"tok{start + 50}"
            return 200, body
        return error(404, "notFound", "no such endpoint")

    def _player(self, vid: str) -> tuple[int, dict]:
        v = self.world.videos.get(vid)
        with self._lock:
            self.player_calls[vid] += 1
            n = self.player_calls[vid]
        if v is None or v.kind == "unavailable":
            return 200, {"playabilityStatus": {"status": "ERROR", "reason": "This video is unavailable"}}
        if v.kind == "age":
            return 200, {"playabilityStatus": {"status": "LOGIN_REQUIRED", "reason": "This video may be inappropriate for some users."}}
        if v.kind == "blocked":
            return 200, {"playabilityStatus": {"status": "LOGIN_REQUIRED", "reason": "Sign in to confirm you’re not a bot"}}
        if v.kind == "flaky" and n <= 2:
            return 503, {}
        ok = {"playabilityStatus": {"status": "OK", "playableInEmbed": True}, "videoDetails": {"videoId": vid, "title": v.title}}
        if v.kind == "disabled":
            return 200, ok

        def track(lang: str, asr: bool = False) -> dict:
            name = {"en": "English", "de": "German", "fr": "French", "en-GB": "English (United Kingdom)",
                    "en-US": "English (United States)"}.get(lang, lang) + (" (auto-generated)" if asr else "")
            t = {"baseUrl": f"https://www.youtube.com/api/timedtext?v={vid}&ei=x&caps=asr&opi=1&xoaf=5&lang={lang}" + ("&kind=asr" if asr else "") + "&fmt=srv3",
                 "name": {"runs": [{"text": name}]}, "vssId": ("a." if asr else ".") + lang, "languageCode": lang, "isTranslatable": True}
            if asr:
                t["kind"] = "asr"
            return t

        tracks = [track(lang, asr) for lang, asr in v.tracks()]
        if v.kind == "regional":  # the generated tracks come first in YouTube's list: the order must not decide
            tracks = tracks[1:] + tracks[:1]
        ok["captions"] = {"playerCaptionsTracklistRenderer": {"captionTracks": tracks, "audioTracks": [],
                                                                "translationLanguages": [{"languageCode": "es", "languageName": {"runs": [{"text": "Spanish"}]}}]}}
        return 200, ok

    def _timedtext(self, vid: str, lang: str, asr: bool) -> tuple[int, str]:
        if self.caption_latency:
            time.sleep(self.caption_latency)
        with self._lock:
            self.timedtext_counts[vid] += 1
        v = self.world.videos[vid]
        if (lang, asr) not in v.tracks():
            return 404, ""
        body = "".join(f'<text start="{2.5 * i:.2f}" dur="2.4">{html.escape(s)}</text>' for i, s in enumerate(v.segments_of(lang, asr)))
        return 200, f'<?xml version="1.0" encoding="utf-8" ?><transcript>{body}</transcript>'

    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: str | bytes, ctype: str) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with fake._lock:
                    fake.log.append((time.monotonic(), "GET", self.path))
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                if u.path.startswith("/youtube/v3/"):
                    code, body = fake._api(self, u.path, q, self.headers)
                    return self._send(code, json.dumps(body), "application/json; charset=UTF-8")
                if u.path == "/watch":
                    if fake.block_all:
                        return self._send(429, "Too Many Requests", "text/html")
                    page = (f'<!DOCTYPE html><html><head><title>{html.escape(q.get("v", ""))} - YouTube</title></head><body>'
                            f'<script>ytcfg.set({{"INNERTUBE_API_KEY":"{INNERTUBE_KEY}","INNERTUBE_CLIENT_NAME":"WEB"}});</script>'
                            f'<div id="player"></div></body></html>')
                    return self._send(200, page, "text/html; charset=utf-8")
                if u.path == "/api/timedtext" and q.get("v") in fake.world.videos:
                    code, body = fake._timedtext(q["v"], q.get("lang", ""), q.get("kind") == "asr")
                    return self._send(code, body, "text/xml; charset=UTF-8")
                self._send(404, "not found", "text/plain")

            def do_POST(self):
                with fake._lock:
                    fake.log.append((time.monotonic(), "POST", self.path))
                u = urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(n) or b"{}")
                if u.path == "/youtubei/v1/player" and parse_qs(u.query).get("key") == [INNERTUBE_KEY]:
                    code, body = fake._player(payload.get("videoId", ""))
                    return self._send(code, json.dumps(body), "application/json")
                self._send(404, "not found", "text/plain")

        return H
