"""
Server settings: defaults (those of the 0.1 server), the 0.1 YAML config
file, and the checks that stop start-up on an impossible value.

One table, `SETTINGS`, describes every tunable once: its command-line flag,
its 0.1 YAML key, how to read it and what it means.  The twistd options
(`incoming.tap`) and the config-file reader are both built from it, so the
two cannot drift apart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attr
import yaml

from .hostlist import HostList


class ConfigError(ValueError):
    """A setting has a wrong type or an impossible value; the text names it."""


@attr.s(frozen=True, auto_attribs=True)
class Settings:
    """Everything the server needs to know at start, with 0.1 defaults."""

    listen: str = "tcp:4000"
    metrics_listen: str = ""  # empty: /metrics is on the main port
    storage_dir: str = "incoming-storage"
    chunk_size_kb: int = 512
    send_ahead: int = 4
    idle_timeout: float = 12 * 3600.0
    websocket_timeout: float = 58.0
    handover_timeout: float = 55.0
    handover_confirm_timeout: float = 600.0
    retention: float = 3600.0
    fsync: str = "complete"
    digest: str = "sha256"
    window: int = 32 * 1024 * 1024
    max_file_size: int = 0
    storage_reserve: int = 64 * 1024 * 1024
    max_uploads: int = 100_000
    allowed_origins: tuple = ()
    backend_allow: tuple = ()
    backend_origins: tuple = ()  # empty: every call from a web page is refused
    backend_token: str = attr.ib(default="", repr=False)
    backend_ca: str = ""
    state: str = attr.ib(default="", repr=False)  # a URL may hold a password
    state_prefix: str = "incoming:"
    workers: int = 1
    finish_url_hosts: tuple = ()  # empty: a signalFinishURL may name any host
    s3_bucket: str = ""  # empty: no S3 store (destType=s3 is refused)
    s3_endpoint: str = ""  # empty: AWS S3 itself
    s3_prefix: str = ""
    s3_region: str = ""
    s3_addressing: str = "auto"
    s3_ca: str = ""
    s3_part_size: int = 16 * 1024 * 1024

    @property
    def chunk_size(self) -> int:
        """Largest chunk in bytes; also the WebSocket frame limit."""
        return self.chunk_size_kb * 1024


# Upper bounds that keep one connection's buffer (one chunk) reasonable.
MAX_CHUNK_SIZE_KB = 64 * 1024
MAX_SEND_AHEAD = 1024
# Autobahn's ping timers are batched in 0.2 s buckets; below this they misfire.
MIN_WEBSOCKET_TIMEOUT = 2.0


def _integer(value, lo: int, hi: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{value!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{value!r} is not a whole number")
    if not lo <= value <= hi:
        raise ConfigError(f"{value} is out of range ({lo} to {hi})")
    return value


def parse_chunk_size_kb(value) -> int:
    return _integer(value, 1, MAX_CHUNK_SIZE_KB)


def parse_send_ahead(value) -> int:
    return _integer(value, 1, MAX_SEND_AHEAD)


def parse_seconds(value) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{value!r} is not a number of seconds")
    if not 0 < value < 10 * 365 * 86400 or value != value:
        raise ConfigError(f"{value} seconds is not a positive duration")
    return float(value)


FSYNC_LEVELS = ("none", "complete", "chunk")


DIGESTS = ("sha256", "none")


def parse_digest(value) -> str:
    if value not in DIGESTS:
        raise ConfigError(f"{value!r} is not one of {', '.join(DIGESTS)}")
    return value


def parse_fsync(value) -> str:
    if value not in FSYNC_LEVELS:
        raise ConfigError(f"{value!r} is not one of {', '.join(FSYNC_LEVELS)}")
    return value


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value) -> int:
    """Bytes, as a number or with a binary suffix: 500M, 20G, 1T."""
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        number = text[: len(text) - len(unit)].strip()
        try:
            value = int(float(number) * _SIZE_UNITS[unit]) if number else None
        except ValueError:
            value = None
        if value is None:
            raise ConfigError(f"{text!r} is not a size (e.g. 500M, 20G)")
    return _integer(value, 0, 1 << 60)


def parse_count(value) -> int:
    return _integer(value, 0, 10_000_000)


def parse_list(value) -> tuple:
    """A comma-separated string or a YAML list of strings."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(i, str) for i in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(f"{value!r} is not a list of strings")
    return tuple(item for item in items if item)


def parse_origins(value) -> tuple:
    origins = parse_list(value)
    for origin in origins:
        if "://" not in origin:
            raise ConfigError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


def parse_networks(value) -> tuple:
    networks = parse_list(value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{network!r} is not an IP address or CIDR range") from None
    return networks


def _checked(value, check: Callable[[Any], object], errors: type[Exception]):
    """``value``, once ``check(value)`` has passed; its error stops start-up."""
    try:
        check(value)
    except errors as e:
        raise ConfigError(str(e)) from None
    return value


def parse_hosts(value) -> tuple:
    """A list for HostList; a bad entry stops start-up, named."""
    return _checked(parse_list(value), HostList, ValueError)


def parse_secret(value) -> str:
    if not isinstance(value, str):
        raise ConfigError("is not a string")
    return value.strip()


def parse_text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{value!r} is not a non-empty string")
    return value.strip()


def parse_ca_file(value) -> str:
    """A PEM file of CA certificates; read now, so a bad one stops start-up."""
    from .tls import CertificateError, load_ca_bundle

    return _checked(parse_text(value), load_ca_bundle, CertificateError)


def parse_listen(value) -> str:
    """A bare port number becomes ``tcp:PORT``; anything else is an endpoint."""
    text = str(value).strip() if isinstance(value, int) else parse_text(value)
    if text.isdigit():
        return f"tcp:{_integer(text, 0, 65535)}"
    if ":" not in text:
        raise ConfigError(f"{text!r} is neither a port number nor an endpoint")
    return text


def parse_state(value) -> str:
    """Empty (the embedded default) or a redis:// / rediss:// URL."""
    from .redis_client import parse_redis_url

    if isinstance(value, str) and not value.strip():
        return ""
    text = parse_text(value)
    try:
        parse_redis_url(text)
    except ValueError as e:
        raise ConfigError(str(e).replace(text, _without_password(text))) from None
    return text


def _without_password(url: str) -> str:
    """A URL as it may be shown: its password replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


S3_ADDRESSING = ("auto", "path", "virtual")
S3_MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
S3_MAX_PART = 5 * 1024 * 1024 * 1024


def parse_url(value) -> str:
    """Empty, or an absolute http(s) URL."""
    from urllib.parse import urlsplit

    if isinstance(value, str) and not value.strip():
        return ""
    text = parse_text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{text!r} is not an http:// or https:// URL")
    return text


def parse_optional_text(value) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return parse_text(value)


def parse_s3_addressing(value) -> str:
    if value not in S3_ADDRESSING:
        raise ConfigError(f"{value!r} is not one of {', '.join(S3_ADDRESSING)}")
    return value


def parse_part_size(value) -> int:
    size = parse_size(value)
    if not S3_MIN_PART <= size <= S3_MAX_PART:
        raise ConfigError(f"{size} bytes is not between 5 MiB and 5 GiB (S3's part sizes)")
    return size


def parse_metrics_listen(value) -> str:
    """As parse_listen; empty means the main port."""
    if isinstance(value, str) and not value.strip():
        return ""
    return parse_listen(value)


@attr.s(frozen=True, auto_attribs=True)
class Setting:
    """One tunable: where it lives in Settings, on the command line, in YAML."""

    field: str
    flag: str
    yaml_key: str | None
    parse: Callable[[Any], Any]
    help: str


SETTINGS = [
    Setting(
        "listen",
        "port",
        None,
        parse_listen,
        "Where to listen: a port number or a Twisted endpoint string "
        "(tcp:4000:interface=127.0.0.1, unix:/run/incoming.sock, "
        "systemd:domain=INET:index=0). Config: IncomingIP, IncomingPort.",
    ),
    Setting(
        "metrics_listen",
        "metrics-port",
        "MetricsPort",
        parse_metrics_listen,
        "Serve /metrics (Prometheus) only here, a port number or an endpoint "
        "(tcp:9100:interface=127.0.0.1), instead of on the main port. "
        "/health answers on both.",
    ),
    Setting(
        "storage_dir",
        "storage-dir",
        "StorageDir",
        parse_text,
        "Folder for uploaded files; created if missing, never wiped.",
    ),
    Setting(
        "chunk_size_kb",
        "chunk-size",
        "UploadChunkSizeKB",
        parse_chunk_size_kb,
        "Largest chunk a browser may send, in KiB (also the WebSocket frame "
        "limit: the most one connection makes the server buffer).",
    ),
    Setting(
        "send_ahead",
        "send-ahead",
        "UploadSendAhead",
        parse_send_ahead,
        "Chunks a browser may send before their acknowledgement.",
    ),
    Setting(
        "idle_timeout",
        "idle-timeout",
        "UploadMaxIdleDurationS",
        parse_seconds,
        "Seconds without progress after which an upload is cancelled.",
    ),
    Setting(
        "websocket_timeout",
        "websocket-timeout",
        "WebsocketConnectionTimeoutS",
        parse_seconds,
        "Seconds after which a silent WebSocket (no MsgUploadReq, or no "
        "answer to pings) is closed; the upload stays resumable.",
    ),
    Setting(
        "handover_timeout",
        "handover-timeout",
        "HandoverTimeoutS",
        parse_seconds,
        "Seconds the backend has to answer the handover POST.",
    ),
    Setting(
        "handover_confirm_timeout",
        "handover-confirm-timeout",
        "HandoverConfirmTimeoutS",
        parse_seconds,
        "Seconds the backend has to call finish_upload after answering wait.",
    ),
    Setting(
        "retention",
        "retention",
        "RetentionS",
        parse_seconds,
        "Seconds a finished or cancelled upload is remembered, across restarts "
        "too, so that a browser that reconnects learns how it ended.",
    ),
    Setting(
        "fsync",
        "fsync",
        "Fsync",
        parse_fsync,
        "When stored data is forced to disk: none (the OS decides; a power "
        "loss may lose recent data), complete (before the handover), chunk "
        "(before each chunk is acknowledged; slower).",
    ),
    Setting(
        "window",
        "window",
        "UploadWindow",
        parse_size,
        "Most bytes in flight for a browser that announces the byte-window "
        "extension and sizes its window to the link (0.1 clients keep the "
        "send-ahead count of chunks).",
    ),
    Setting(
        "digest",
        "digest",
        "Digest",
        parse_digest,
        "Checksum computed as the file arrives and sent to the backend in the "
        "handover (sha256), or none.",
    ),
    Setting(
        "max_file_size",
        "max-file-size",
        "MaxFileSize",
        parse_size,
        "Largest file accepted, in bytes (suffixes K, M, G, T); 0 means no limit.",
    ),
    Setting(
        "storage_reserve",
        "storage-reserve",
        "StorageReserve",
        parse_size,
        "Free space to keep in the storage folder: an upload whose remaining "
        "bytes do not fit above it beside the rest of the uploads in progress "
        "(not those stalled for 60 s) is refused.",
    ),
    Setting(
        "max_uploads",
        "max-uploads",
        "MaxUploads",
        parse_count,
        "Most uploads open at once, tickets that never connected included "
        "(new_upload answers 503 beyond); 0 means no limit.",
    ),
    Setting(
        "allowed_origins",
        "allowed-origins",
        "AllowedOrigins",
        parse_origins,
        "Comma-separated web page origins allowed to open upload WebSockets "
        "(wildcards allowed: https://*.example.com); empty means any, as 0.1.",
    ),
    Setting(
        "backend_allow",
        "backend-allow",
        "BackendAllow",
        parse_networks,
        "Comma-separated IP addresses or CIDR ranges allowed to call the "
        "backend API; empty means any.",
    ),
    Setting(
        "backend_origins",
        "backend-origins",
        "BackendOrigins",
        parse_origins,
        "Comma-separated web page origins allowed to call the backend API "
        "(wildcards allowed: https://*.example.com); empty means none: a call "
        "with an Origin header, or a Sec-Fetch-Site header other than none, "
        "is refused (backends send neither).",
    ),
    Setting(
        "backend_token",
        "backend-token",
        "BackendToken",
        parse_secret,
        "If set, backend API calls must send 'Authorization: Bearer TOKEN'.",
    ),
    Setting(
        "backend_ca",
        "backend-ca",
        "BackendCA",
        parse_ca_file,
        "PEM file of the CA certificates that an https signalFinishURL's "
        "certificate must chain to (a private CA); if unset, the system's "
        "trust store. Host names are always checked.",
    ),
    Setting(
        "finish_url_hosts",
        "finish-url-hosts",
        "FinishURLHosts",
        parse_hosts,
        "Comma-separated hosts a signalFinishURL may name (new_upload answers "
        "400 for others): host names, *.example.com (any subdomain), IP "
        "addresses, CIDR ranges (for IP hosts; names are never resolved); any "
        "port. Empty means any host, as 0.1.",
    ),
]

SETTINGS += [
    Setting(
        "state",
        "state",
        "State",
        parse_state,
        "Where upload records, locks and events live: empty for the storage "
        "folder (one server, nothing else to install), or a Redis URL "
        "(redis://[:password@]host:port/db, rediss:// for TLS); the password "
        "is never logged.",
    ),
    Setting(
        "state_prefix",
        "state-prefix",
        "StatePrefix",
        parse_text,
        "Prefix of every key this server uses in Redis (with --state).",
    ),
]

SETTINGS.append(
    Setting(
        "workers",
        "workers",
        "Workers",
        lambda value: _integer(value, 1, 256),
        "Worker processes that share the listening port (use the machine's "
        "cores); more than 1 needs --state, through which they share the uploads.",
    )
)

SETTINGS += [
    Setting(
        "s3_bucket",
        "s3-bucket",
        "S3Bucket",
        parse_optional_text,
        "Bucket of the S3 store (destType=s3): AWS S3, Ceph RGW or any "
        "S3-compatible store; empty: no S3 store. Credentials come from the "
        "AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, shared config "
        "files, instance roles), never from here.",
    ),
    Setting(
        "s3_endpoint",
        "s3-endpoint",
        "S3Endpoint",
        parse_url,
        "URL of the S3 service (https://rgw.example.com:7480); empty: AWS S3.",
    ),
    Setting(
        "s3_prefix",
        "s3-prefix",
        "S3Prefix",
        parse_optional_text,
        "Prefix of the object keys (uploads/): each upload is <prefix><ticket id>.",
    ),
    Setting(
        "s3_region",
        "s3-region",
        "S3Region",
        parse_optional_text,
        "Region to sign requests for (empty: AWS_REGION or the AWS config file's, else us-east-1).",
    ),
    Setting(
        "s3_addressing",
        "s3-addressing",
        "S3Addressing",
        parse_s3_addressing,
        "How the bucket is named in URLs: path (endpoint/bucket/key, usual "
        "for Ceph RGW), virtual (bucket.endpoint/key) or auto.",
    ),
    Setting(
        "s3_ca",
        "s3-ca",
        "S3CA",
        parse_ca_file,
        "PEM file of the CA certificates that sign the S3 endpoint's "
        "certificate (default: botocore's bundle, not the system's).",
    ),
    Setting(
        "s3_part_size",
        "s3-part-size",
        "S3PartSize",
        parse_part_size,
        "Size of the parts an upload is sent to S3 in (5M to 5G; the "
        "chunks of one part are staged in the storage folder until sent); "
        "a file that would need more than 10,000 parts gets larger ones.",
    ),
]

SETTING_BY_FIELD = {s.field: s for s in SETTINGS}
YAML_KEYS = {s.yaml_key: s for s in SETTINGS if s.yaml_key} | {
    "IncomingIP": None,
    "IncomingPort": None,
}


def describe(field: str) -> str:
    """How a user names a setting: its flag and, if any, its YAML key."""
    s = SETTING_BY_FIELD[field]
    return f"--{s.flag} ({s.yaml_key})" if s.yaml_key else f"--{s.flag}"


def _listen_from_yaml(ip, port) -> str:
    port_text = f"{_integer(port, 0, 65535)}" if port is not None else "4000"
    if ip is None or ip in ("", "0.0.0.0"):
        return f"tcp:{port_text}"
    ip = parse_text(ip)
    if ":" in ip:  # IPv6: endpoint strings escape colons
        return "tcp6:{}:interface={}".format(port_text, ip.replace(":", r"\:"))
    return f"tcp:{port_text}:interface={ip}"


def read_yaml_config(text: str) -> dict:
    """Parse a 0.1 incoming_cfg.yaml into a dict of Settings fields."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("the config file must be a mapping of keys to values")
    values = {}
    for key, value in document.items():
        if key not in YAML_KEYS:
            known = ", ".join(sorted(YAML_KEYS))
            raise ConfigError(f"unknown key {key!r} (known keys: {known})")
        setting = YAML_KEYS[key]
        if setting is None:
            continue
        try:
            values[setting.field] = setting.parse(value)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    if "IncomingIP" in document or "IncomingPort" in document:
        try:
            values["listen"] = _listen_from_yaml(
                document.get("IncomingIP"), document.get("IncomingPort")
            )
        except ConfigError as e:
            raise ConfigError(f"IncomingIP/IncomingPort: {e}") from None
    return values


# Endpoints whose listening socket workers can adopt as it is.
WORKER_ENDPOINTS = ("tcp:", "tcp6:", "unix:", "systemd:")


def check_consistency(settings: Settings) -> Settings:
    """Refuse combinations that cannot work; return the settings unchanged."""
    if settings.workers > 1 and not settings.state:
        raise ConfigError(
            f"{describe('workers')} {settings.workers} needs {describe('state')}: "
            "the workers share their uploads through it"
        )
    if settings.workers > 1 and not settings.listen.startswith(WORKER_ENDPOINTS):
        raise ConfigError(
            f"{describe('workers')} {settings.workers} needs a plain {describe('listen')} "
            f"({', '.join(WORKER_ENDPOINTS)}...), not {settings.listen.split(':')[0]}: the "
            "workers take the listening socket as it is (put TLS in front, e.g. nginx)"
        )
    if settings.workers > 1 and settings.metrics_listen:
        raise ConfigError(
            f"{describe('workers')} {settings.workers} cannot be combined with "
            f"{describe('metrics_listen')} (each worker would need a port of its own); "
            "each worker answers /metrics on the main port"
        )
    for field in ("s3_endpoint", "s3_prefix", "s3_region", "s3_ca"):
        if getattr(settings, field) and not settings.s3_bucket:
            raise ConfigError(f"{describe(field)} needs {describe('s3_bucket')}")
    if settings.handover_timeout > settings.idle_timeout:
        raise ConfigError(
            f"{describe('handover_timeout')} {settings.handover_timeout:g} s is "
            f"longer than {describe('idle_timeout')} {settings.idle_timeout:g} s"
        )
    if settings.window < settings.chunk_size:
        raise ConfigError(
            f"{describe('window')} {settings.window} bytes is smaller than one chunk "
            f"({describe('chunk_size_kb')} {settings.chunk_size_kb} KiB)"
        )
    if settings.websocket_timeout < MIN_WEBSOCKET_TIMEOUT:
        raise ConfigError(
            f"{describe('websocket_timeout')} {settings.websocket_timeout:g} s is "
            f"shorter than {MIN_WEBSOCKET_TIMEOUT:g} s (pings need time to come back)"
        )
    return settings


def build_settings(config_values: dict, flag_values: dict) -> Settings:
    """Defaults, then the config file, then the command line."""
    return check_consistency(Settings(**{**config_values, **flag_values}))
