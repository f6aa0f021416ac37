"""Settings and the ``twistd incoming`` options: defaults, --port, the 0.1
YAML config file, precedence, and the errors that stop start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from twisted.python.usage import UsageError

from incoming.config import SETTINGS
from incoming.tap import Options

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# The defaults of the 0.1 (Go) server, as the wire-protocol spec lists them.
DEFAULTS_0_1 = {
    "listen": "tcp:4000",
    "chunk_size_kb": 512,
    "send_ahead": 4,
    "idle_timeout": 43200,
    "websocket_timeout": 58,
    "handover_timeout": 55,
    "handover_confirm_timeout": 600,
}

# How --help should show each default.
HELP_DEFAULTS = {
    "listen": "tcp:4000",
    "metrics_listen": "the main port",
    "storage_dir": "incoming-storage",
    "chunk_size_kb": "512",
    "send_ahead": "4",
    "idle_timeout": "43200",
    "websocket_timeout": "58",
    "handover_timeout": "55",
    "handover_confirm_timeout": "600",
    "retention": "3600",
    "fsync": "complete",
    "digest": "sha256",
    "window": "33554432",
    "max_file_size": "0",
    "storage_reserve": "67108864",
    "max_uploads": "100000",
    "allowed_origins": "any",
    "backend_allow": "any",
    "backend_origins": "none",
    "backend_token": "none",
    "backend_ca": "the system's trust store",
    "state": "the storage folder",
    "state_prefix": "incoming:",
    "workers": "1",
    "finish_url_hosts": "any",
    "s3_bucket": "none (no S3 store)",
    "s3_endpoint": "AWS S3",
    "s3_prefix": "none",
    "s3_region": "the AWS chain's, else us-east-1",
    "s3_addressing": "auto",
    "s3_ca": "botocore's bundle (AWS_CA_BUNDLE, else certifi's)",
    "s3_part_size": "16777216",
}

ALL_KEYS_YAML = """\
IncomingIP: 127.0.0.1
IncomingPort: 4100
StorageDir: {storage}
UploadChunkSizeKB: 256
UploadSendAhead: 8
UploadMaxIdleDurationS: 7200
WebsocketConnectionTimeoutS: 30
HandoverTimeoutS: 20
HandoverConfirmTimeoutS: 900
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Options create the storage folder; keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def parse(*argv) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def settings(*argv):
    return parse(*argv).settings


def usage_error(*argv) -> str:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    message = str(info.value)
    assert message.strip()
    return message


def write_config(tmp_path, text: str, name: str = "incoming_cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- defaults ---------------------------------------------------------------


def test_defaults_are_those_of_0_1():
    s = settings()
    for field, value in DEFAULTS_0_1.items():
        assert getattr(s, field) == value, field
    assert s.chunk_size == 512 * 1024


def test_default_storage_dir_is_created_in_the_working_directory(in_tmp):
    s = settings()
    assert s.storage_dir == "incoming-storage"
    assert (in_tmp / "incoming-storage").is_dir()


# ---- --port -----------------------------------------------------------------


def test_bare_port_number_becomes_tcp_endpoint():
    assert settings("--port", "4000").listen == "tcp:4000"
    assert settings("--port=8080").listen == "tcp:8080"


@pytest.mark.parametrize(
    "endpoint",
    ["tcp:4001:interface=127.0.0.1", "unix:/tmp/x.sock", "tcp6:4002:interface=\\:\\:1"],
)
def test_endpoint_strings_are_accepted(endpoint):
    assert settings("--port", endpoint).listen == endpoint


@pytest.mark.parametrize("bad", ["garbage", "70000", "tcp:notaport", "nosuchtype:4000", ""])
def test_bad_port_is_a_usage_error(bad):
    message = usage_error("--port", bad)
    assert "port" in message.lower()


# ---- flags ------------------------------------------------------------------


def test_flags_set_every_setting(in_tmp):
    s = settings(
        "--port", "tcp:4200:interface=127.0.0.1",
        "--storage-dir", str(in_tmp / "files"),
        "--chunk-size", "128",
        "--send-ahead", "16",
        "--idle-timeout", "3600",
        "--websocket-timeout", "10",
        "--handover-timeout", "5.5",
        "--handover-confirm-timeout", "120",
    )
    assert s.listen == "tcp:4200:interface=127.0.0.1"
    assert s.storage_dir == str(in_tmp / "files")
    assert (in_tmp / "files").is_dir()
    assert s.chunk_size_kb == 128
    assert s.send_ahead == 16
    assert s.idle_timeout == 3600
    assert s.websocket_timeout == 10
    assert s.handover_timeout == 5.5
    assert s.handover_confirm_timeout == 120


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--send-ahead", "0"], "--send-ahead"),
        (["--send-ahead", "many"], "--send-ahead"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--chunk-size", "1.5"], "--chunk-size"),
        (["--idle-timeout=-1"], "--idle-timeout"),
        (["--handover-timeout", "0"], "--handover-timeout"),
        (["--websocket-timeout", "soon"], "--websocket-timeout"),
        (["--handover-confirm-timeout=-600"], "--handover-confirm-timeout"),
    ],
)
def test_bad_flag_values_are_usage_errors_naming_the_flag(argv, flag):
    assert flag in usage_error(*argv)


def test_handover_timeout_longer_than_idle_timeout_flags():
    message = usage_error("--idle-timeout", "50", "--handover-timeout", "100")
    assert "--handover-timeout" in message


# ---- the 0.1 config file ------------------------------------------------------


def test_config_file_with_every_0_1_key_sets_every_setting(tmp_path):
    storage = tmp_path / "uploads"
    path = write_config(tmp_path, ALL_KEYS_YAML.format(storage=storage))
    s = settings("--config", path)
    assert s.listen == "tcp:4100:interface=127.0.0.1"
    assert s.storage_dir == str(storage)
    assert storage.is_dir()
    assert s.chunk_size_kb == 256
    assert s.chunk_size == 256 * 1024
    assert s.send_ahead == 8
    assert s.idle_timeout == 7200
    assert s.websocket_timeout == 30
    assert s.handover_timeout == 20
    assert s.handover_confirm_timeout == 900


def test_short_config_option(tmp_path):
    path = write_config(tmp_path, "UploadSendAhead: 7\n")
    assert settings("-c", path).send_ahead == 7


def test_incoming_port_alone_listens_on_all_interfaces(tmp_path):
    path = write_config(tmp_path, "IncomingPort: 4100\n")
    assert settings("--config", path).listen == "tcp:4100"


def test_incoming_ip_alone_keeps_port_4000(tmp_path):
    path = write_config(tmp_path, "IncomingIP: 127.0.0.1\n")
    assert settings("--config", path).listen == "tcp:4000:interface=127.0.0.1"


def test_config_file_leaves_unset_keys_at_their_defaults(tmp_path):
    path = write_config(tmp_path, "UploadSendAhead: 2\n")
    s = settings("--config", path)
    assert s.send_ahead == 2
    for field, value in DEFAULTS_0_1.items():
        if field != "send_ahead":
            assert getattr(s, field) == value, field


def test_empty_config_file_means_defaults(tmp_path):
    path = write_config(tmp_path, "")
    s = settings("--config", path)
    for field, value in DEFAULTS_0_1.items():
        assert getattr(s, field) == value, field


@pytest.mark.parametrize("flags_first", [True, False])
def test_flags_override_the_config_file_in_any_order(tmp_path, flags_first):
    storage = tmp_path / "uploads"
    path = write_config(tmp_path, ALL_KEYS_YAML.format(storage=storage))
    flags = [
        "--port", "4300",
        "--send-ahead", "3",
        "--chunk-size", "64",
        "--handover-timeout", "9",
        "--storage-dir", str(tmp_path / "elsewhere"),
    ]
    argv = flags + ["--config", path] if flags_first else ["--config", path] + flags
    s = settings(*argv)
    assert s.listen == "tcp:4300"
    assert s.send_ahead == 3
    assert s.chunk_size_kb == 64
    assert s.handover_timeout == 9
    assert s.storage_dir == str(tmp_path / "elsewhere")
    # What the flags did not mention still comes from the file.
    assert s.idle_timeout == 7200
    assert s.websocket_timeout == 30
    assert s.handover_confirm_timeout == 900


def test_flag_may_make_a_bad_file_value_consistent(tmp_path):
    # The consistency check runs on the final settings, not on the file alone.
    path = write_config(tmp_path, "HandoverTimeoutS: 100\nUploadMaxIdleDurationS: 50\n")
    assert settings("--config", path, "--idle-timeout", "2000").handover_timeout == 100


@pytest.mark.parametrize(
    "text, key",
    [
        ("UploadSendAheadd: 4\n", "UploadSendAheadd"),
        ("ListenPort: 4000\n", "ListenPort"),
        ("UploadSendAhead: lots\n", "UploadSendAhead"),
        ("UploadSendAhead: true\n", "UploadSendAhead"),
        ("UploadSendAhead: 2.5\n", "UploadSendAhead"),
        ("UploadSendAhead: 0\n", "UploadSendAhead"),
        ("UploadChunkSizeKB: 0\n", "UploadChunkSizeKB"),
        ("UploadChunkSizeKB: [512]\n", "UploadChunkSizeKB"),
        ("UploadMaxIdleDurationS: -1\n", "UploadMaxIdleDurationS"),
        ("WebsocketConnectionTimeoutS: -58\n", "WebsocketConnectionTimeoutS"),
        ("HandoverTimeoutS: -55\n", "HandoverTimeoutS"),
        ("HandoverConfirmTimeoutS: 0\n", "HandoverConfirmTimeoutS"),
        ("HandoverConfirmTimeoutS: false\n", "HandoverConfirmTimeoutS"),
        ("StorageDir: 42\n", "StorageDir"),
        ("IncomingPort: http\n", "IncomingPort"),
        ("IncomingPort: 99999\n", "IncomingPort"),
        ("HandoverTimeoutS: 100\nUploadMaxIdleDurationS: 50\n", "HandoverTimeoutS"),
    ],
)
def test_bad_config_values_are_usage_errors_naming_the_key(tmp_path, text, key):
    path = write_config(tmp_path, text)
    message = usage_error("--config", path)
    assert key in message


def test_missing_config_file_is_a_usage_error_naming_it(tmp_path):
    path = str(tmp_path / "no-such-incoming_cfg.yaml")
    assert path in usage_error("--config", path)


@pytest.mark.parametrize(
    "text",
    ["- IncomingPort\n- 4000\n", "just some text\n", "42\n", "IncomingPort: [\n"],
)
def test_config_file_that_is_not_a_mapping_is_a_usage_error(tmp_path, text):
    path = write_config(tmp_path, text)
    usage_error("--config", path)


# ---- twistd ----------------------------------------------------------------------


def run_twistd(cwd, *argv, timeout=60):
    started = time.monotonic()
    result = subprocess.run(
        [TWISTD, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def help_by_option(text: str) -> dict[str, str]:
    """Option name -> its help text, as a reader joins the wrapped lines."""
    options: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        # An option starts near the left margin; "--flag" deep in a wrapped
        # help text is a continuation.
        match = re.match(r"^ {1,8}(?:-\w, )?--([\w-]+)=?\s*(.*)$", line)
        if match:
            current = match.group(1)
            options[current] = match.group(2).strip()
        elif current and line.startswith(" " * 10) and line.strip():
            so_far = options[current]
            joiner = "" if so_far.endswith("-") else " "
            options[current] = (so_far + joiner + line.strip()).strip()
        else:
            current = None
    return options


def test_twistd_help_lists_every_option_with_its_default(tmp_path):
    result, _ = run_twistd(tmp_path, "incoming", "--help")
    assert result.returncode == 0, result.stderr
    options = help_by_option(result.stdout)
    assert "config" in options
    for setting in SETTINGS:
        assert setting.flag in options, f"--{setting.flag} missing from --help"
        expected = f"[default: {HELP_DEFAULTS[setting.field]}]"
        assert expected in options[setting.flag], (setting.flag, options[setting.flag])


def test_twistd_refuses_a_bad_config_file_quickly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("UploadSendAhead: 4\nUploadChunkSizeKBB: 512\n", encoding="utf-8")
    result, elapsed = run_twistd(
        tmp_path, "-n", "incoming", "--config", "bad.yaml",
        "--port", "tcp:0:interface=127.0.0.1",
    )
    assert result.returncode != 0
    assert elapsed < 30
    assert "UploadChunkSizeKBB" in result.stdout + result.stderr


def test_twistd_refuses_an_impossible_config_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("UploadSendAhead: 0\n", encoding="utf-8")
    result, _ = run_twistd(
        tmp_path, "-n", "incoming", "--config", "bad.yaml",
        "--port", "tcp:0:interface=127.0.0.1",
    )
    assert result.returncode != 0
    assert "UploadSendAhead" in result.stdout + result.stderr


@pytest.mark.parametrize("level", ["none", "complete", "chunk"])
def test_fsync_levels(level):
    assert settings("--fsync", level).fsync == level


def test_unknown_fsync_level_is_refused():
    with pytest.raises(UsageError, match="--fsync"):
        settings("--fsync", "sometimes")


# ---- --backend-origins --------------------------------------------------------


def test_backend_origins_default_to_none():
    assert settings().backend_origins == ()


def test_backend_origins_from_flag_and_config_file(tmp_path):
    flag = settings("--backend-origins", "https://admin.example.com, https://*.example.org")
    assert flag.backend_origins == ("https://admin.example.com", "https://*.example.org")
    path = write_config(tmp_path, "BackendOrigins: [https://admin.example.com]\n")
    assert settings("--config", path).backend_origins == ("https://admin.example.com",)


def test_a_backend_origin_without_scheme_stops_start_up_naming_it(tmp_path):
    message = usage_error("--backend-origins", "admin.example.com")
    assert "--backend-origins" in message and "'admin.example.com'" in message
    path = write_config(tmp_path, "BackendOrigins: https://ok.example, null\n")
    message = usage_error("--config", path)
    assert "BackendOrigins" in message and "'null'" in message


# ---- --finish-url-hosts ---------------------------------------------------------


def test_finish_url_hosts_default_to_any():
    assert settings().finish_url_hosts == ()


def test_finish_url_hosts_from_flag_and_config_file(tmp_path):
    entries = ("backend.example", "*.apps.example", "10.0.0.0/8", "192.0.2.7", "::1")
    assert settings("--finish-url-hosts", ",".join(entries)).finish_url_hosts == entries
    path = write_config(tmp_path, "FinishURLHosts: [backend.example, 10.0.0.0/8]\n")
    assert settings("--config", path).finish_url_hosts == ("backend.example", "10.0.0.0/8")


@pytest.mark.parametrize(
    "entry",
    ["backend.example:8000", "http://backend.example", "*", "*.", "a..b", "x.*.example",
     "10.0.0", "10.0.0.0/33", "[::1]", "-backend.example"],
)
def test_a_bad_finish_url_host_stops_start_up_naming_it(tmp_path, entry):
    message = usage_error("--finish-url-hosts", f"backend.example,{entry}")
    assert "--finish-url-hosts" in message and repr(entry) in message
    path = write_config(tmp_path, f"FinishURLHosts: ['{entry}']\n")
    message = usage_error("--config", path)
    assert "FinishURLHosts" in message and repr(entry) in message


@pytest.mark.parametrize("url", ["http://redis.example:6379", "redis://", "redis://h:port/0",
                                 "redis://h:6379/zero", "rediss://:s3cret@h:99999/0"])
def test_a_bad_state_url_stops_start_up_naming_it_without_its_password(tmp_path, url):
    message = usage_error("--state", url)
    assert "--state" in message
    assert "s3cret" not in message
    path = write_config(tmp_path, f"State: '{url}'\n")
    message = usage_error("--config", path)
    assert "State" in message and "s3cret" not in message


def test_a_state_url_is_taken_as_given_and_never_shown_with_its_password():
    from incoming.tap import Options

    options = Options()
    options.parseOptions(["--state", "rediss://app:s3cret@redis.example:6380/2"])
    assert options.settings.state == "rediss://app:s3cret@redis.example:6380/2"
    assert "s3cret" not in repr(options.settings)
