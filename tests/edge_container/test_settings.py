import re
from pathlib import Path

import pytest

from edge_container.errors import ConfigurationError
from edge_container.policies import POLICIES
from edge_container.settings import Settings
from modelpack.policy_names import POLICY_NAMES


def test_defaults_when_the_environment_is_empty() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model_dir == Path("/models") and settings.port == 8080 and settings.policy == "threshold"
    assert not settings.cloud_enabled


def test_reads_every_kind_of_value() -> None:
    settings = Settings.from_env({
        "EDGE_MODEL_DIR": "/srv/model", "EDGE_PORT": "9000", "EDGE_POLICY": "adaptive",
        "EDGE_TARGET_ESCALATION_RATE": "0.15", "EDGE_MAX_WAIT_MS": "2.5", "EDGE_ACCESS_LOG": "true",
        "EDGE_CLOUD_URL": "https://api.example.com/prod/", "EDGE_CLOUD_API_KEY": "k",
        "EDGE_S3_LATEST_URI": "s3://models-bucket/edge/latest.json", "EDGE_WORKERS": "3",
    })
    assert settings.model_dir == Path("/srv/model") and settings.port == 9000 and settings.workers == 3
    assert settings.policy == "adaptive" and settings.target_escalation_rate == 0.15
    assert settings.max_wait_ms == 2.5 and settings.access_log is True
    assert settings.cloud_infer_url == "https://api.example.com/prod/v1/infer"
    assert settings.s3_location == ("models-bucket", "edge/latest.json")


@pytest.mark.parametrize(("key", "value"), [
    ("EDGE_PORT", "http"), ("EDGE_PORT", "70000"), ("EDGE_WORKERS", "-1"), ("EDGE_MAX_WAIT_MS", "fast"),
    ("EDGE_POLICY", "smart"), ("EDGE_ACCESS_LOG", "maybe"), ("EDGE_CLOUD_URL", "ftp://x"),
    ("EDGE_TARGET_ESCALATION_RATE", "1.5"), ("EDGE_S3_LATEST_URI", "s3://bucket"), ("EDGE_ADMIN_TOKEN", "short"),
    ("EDGE_PROCESSES", "0"), ("EDGE_PROCESS_INDEX", "0"),  # an index without the supervisor's peers folder
])
def test_a_bad_value_fails_naming_its_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({key: value})
    assert info.value.key == key and key in str(info.value)


# What an operator reads when the container will not start: the wording is part of its interface.
BAD_VALUE_MESSAGES = {
    "EDGE_PORT=70000": "EDGE_PORT='70000' must be in [0, 65535]",
    "EDGE_QUEUE_SIZE=0": "EDGE_QUEUE_SIZE='0' must be in [1, ∞]",
    "EDGE_PORT=http": "EDGE_PORT='http' is not an integer",
    "EDGE_MAX_WAIT_MS= fast ": "EDGE_MAX_WAIT_MS='fast' is not a number",
    "EDGE_BREAKER_RESET_S=-1": "EDGE_BREAKER_RESET_S='-1' must be in [0.0, ∞]",
    "EDGE_TARGET_ESCALATION_RATE=nan": "EDGE_TARGET_ESCALATION_RATE='nan' must be in [0.0, 1.0]",
    "EDGE_ACCESS_LOG=Maybe": "EDGE_ACCESS_LOG='maybe' is not a boolean (true/false)",
    "EDGE_LOG_LEVEL=loud": "EDGE_LOG_LEVEL='loud' must be one of critical, error, warning, info, debug",
    "EDGE_CLOUD_URL=ftp://x": "EDGE_CLOUD_URL='ftp://x' must be an http(s) base URL without query or fragment",
}


@pytest.mark.parametrize(("assignment", "message"), BAD_VALUE_MESSAGES.items())
def test_a_bad_value_says_what_is_wrong_with_it(assignment: str, message: str) -> None:
    key, _, value = assignment.partition("=")
    with pytest.raises(ConfigurationError, match=f"^environment variable {re.escape(message)}$"):
        Settings.from_env({key: value})


def test_a_cloud_url_needs_an_api_key_or_sigv4() -> None:
    with pytest.raises(ConfigurationError, match="EDGE_CLOUD_API_KEY"):
        Settings.from_env({"EDGE_CLOUD_URL": "http://127.0.0.1:1"})
    assert Settings.from_env({"EDGE_CLOUD_URL": "http://127.0.0.1:1", "EDGE_CLOUD_SIGV4_REGION": "eu-west-1"})


def test_every_policy_name_has_a_class() -> None:
    assert set(POLICY_NAMES) == set(POLICIES)


def test_the_cloud_key_and_admin_token_may_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("cloud-key-from-a-file\n")
    (tmp_path / "token").write_text("admin-token-0123456789")
    s = Settings.from_env({"EDGE_CLOUD_URL": "https://api.example.com", "EDGE_CLOUD_API_KEY_FILE": str(tmp_path / "key"),
                           "EDGE_ADMIN_TOKEN_FILE": str(tmp_path / "token")})
    assert s.cloud_api_key == "cloud-key-from-a-file" and s.admin_token == "admin-token-0123456789"
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_env({"EDGE_CLOUD_API_KEY": "x", "EDGE_CLOUD_API_KEY_FILE": str(tmp_path / "key")})
    with pytest.raises(ConfigurationError, match="cannot be read") as missing:
        Settings.from_env({"EDGE_ADMIN_TOKEN_FILE": str(tmp_path / "absent")})
    assert missing.value.key == "EDGE_ADMIN_TOKEN_FILE"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        Settings.from_env({"EDGE_CLOUD_API_KEY_FILE": str(tmp_path / "empty")})


def test_a_child_process_gets_its_index_and_peers_folder(tmp_path: Path) -> None:
    child = Settings.from_env({"EDGE_PROCESSES": "3", "EDGE_PROCESS_INDEX": "2", "EDGE_PEERS_DIR": str(tmp_path)})
    assert (child.processes, child.process_index, child.peers_dir) == (3, 2, tmp_path)
    assert child.is_child and not child.is_primary
    alone = Settings.from_env({"EDGE_PROCESSES": "3"})
    assert not alone.is_child and alone.is_primary and alone.peers_dir is None
    with pytest.raises(ConfigurationError, match="EDGE_PROCESS_INDEX"):
        Settings.from_env({"EDGE_PROCESSES": "3", "EDGE_PROCESS_INDEX": "3", "EDGE_PEERS_DIR": str(tmp_path)})


def test_several_processes_run_their_batches_inline_unless_told_otherwise() -> None:
    assert Settings.from_env({}).workers == 2
    assert Settings.from_env({"EDGE_PROCESSES": "4"}).workers == 0
    assert Settings.from_env({"EDGE_PROCESSES": "4", "EDGE_WORKERS": "1"}).workers == 1
    assert Settings.from_env({"EDGE_PROCESSES": "4"}).interpreters == 1
