"""Settings: validated once, errors name the setting, and the example file never drifts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.config import CredentialKind, PolicySettings, QueueKind, Settings
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HOST_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "AzureWebJobsFeatureFlags"}

LOCAL = {
    "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
    "RESPONDER_CREDENTIAL": "simulator",
    "SIMULATOR_TOKEN": "t",
    "RESPONDER_QUEUE": "memory",
}


def example_values() -> dict[str, str]:
    values: dict[str, str] = json.loads((ROOT / "local.settings.example.json").read_text())[
        "Values"
    ]
    return values


def test_example_settings_list_exactly_the_settings_the_code_reads() -> None:
    assert set(example_values()) - HOST_SETTINGS == Settings.setting_names()


def test_example_settings_are_valid() -> None:
    settings = Settings.from_env(example_values())
    assert settings.dry_run is True
    assert settings.queue is QueueKind.SERVICE_BUS


def test_defaults_suit_azure() -> None:
    settings = Settings.from_env(
        {
            "RESPONDER_TABLES_ENDPOINT": "https://stresp.table.core.windows.net",
            "ServiceBusConnection__fullyQualifiedNamespace": "sb.servicebus.windows.net",
        }
    )
    assert settings.credential is CredentialKind.MANAGED_IDENTITY
    assert str(settings.graph_base_url) == "https://graph.microsoft.com/v1.0"
    assert settings.dry_run is False


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"GRAPH_MAX_RETRIES": "eleven"}, "GRAPH_MAX_RETRIES"),
        ({"RESPONDER_QUEUE": "kafka"}, "RESPONDER_QUEUE"),
        ({"RESPONDER_AUDIT_TABLE": "audit-trail"}, "RESPONDER_AUDIT_TABLE"),
        ({"RESPONDER_WEBHOOK_SECRET": "short"}, "RESPONDER_WEBHOOK_SECRET"),
        ({"GRAPH_BASE_URL": "not a url"}, "GRAPH_BASE_URL"),
        (
            {"RESPONDER_TABLES_ENDPOINT": "https://x.table.core.windows.net"},
            "RESPONDER_TABLES_CONNECTION and RESPONDER_TABLES_ENDPOINT",
        ),
        ({"SIMULATOR_TOKEN": ""}, "SIMULATOR_TOKEN"),
    ],
)
def test_a_bad_setting_is_named_in_the_error(override: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({**LOCAL, **override})


def test_secrets_never_show_in_repr() -> None:
    secret = "s3cr3t-" + "x" * 40
    settings = Settings.from_env({**LOCAL, "RESPONDER_WEBHOOK_SECRET": secret})
    assert secret not in repr(settings) and secret not in str(settings.model_dump())


def test_protected_identities_are_a_comma_list() -> None:
    settings = PolicySettings.from_env(
        {"RESPONDER_PROTECTED_IDENTITIES": " a@contoso.com, ,0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20"}
    )
    assert settings.protected_identities == (
        "a@contoso.com",
        "0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20",
    )


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", readme, flags=re.MULTILINE))
    settings_table = {name for name in documented if name.isupper() or "__" in name}
    assert settings_table == Settings.setting_names()


def test_an_unresolved_key_vault_reference_is_no_secret() -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-resp.vault.azure.net/secrets/webhook/)"
    with pytest.raises(ConfigError, match="RESPONDER_WEBHOOK_SECRET.*Key Vault reference"):
        Settings.from_env({**LOCAL, "RESPONDER_WEBHOOK_SECRET": reference})


@pytest.mark.parametrize(
    "name", ["GRAPH_BASE_URL", "EXCHANGE_BASE_URL", "RESPONDER_TABLES_ENDPOINT"]
)
def test_tokens_never_travel_over_plain_http_to_another_host(name: str) -> None:
    values = {**LOCAL, name: "http://graph.contoso.example/v1.0"}
    if name == "RESPONDER_TABLES_ENDPOINT":
        values.pop("RESPONDER_TABLES_CONNECTION")
    with pytest.raises(ConfigError, match=f"{name}.*https"):
        Settings.from_env(values)
    assert Settings.from_env({**LOCAL, "GRAPH_BASE_URL": "http://127.0.0.1:8080/v1.0"})
