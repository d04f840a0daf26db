"""The one Schema Registry accessor: unknown subjects/ids are None, every other failure is one error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.resources.schema_registry import (
    SchemaRegistryUnavailable,
    all_versions,
    latest_version,
    registry_url,
    schema_text,
    subject_names,
)


class _Registry:
    """Answers from a dict of subject -> versions; `down` makes every call fail as a refused connection."""

    _conf = {"url": "https://user:secret@registry.test:8081"}

    def __init__(self, subjects: dict[str, list[str]], down: Exception | None = None) -> None:
        self.subjects, self.down = subjects, down

    def _check(self, subject: str) -> list[str]:
        if self.down:
            raise self.down
        if subject not in self.subjects:
            raise SchemaRegistryError(404, 40401, f"Subject '{subject}' not found.")
        return self.subjects[subject]

    def get_versions(self, subject: str) -> list[int]:
        return list(range(1, len(self._check(subject)) + 1))

    def get_version(self, subject: str, version: int) -> Any:
        text = self._check(subject)[version - 1]
        return SimpleNamespace(schema_id=100 + version, version=version, schema=SimpleNamespace(schema_str=text))

    def get_latest_version(self, subject: str) -> Any:
        return self.get_version(subject, len(self._check(subject)))

    def get_schema(self, schema_id: int) -> Any:
        if self.down:
            raise self.down
        if schema_id != 101:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return SimpleNamespace(schema_str="s1")


def test_subject_names_are_ticdcs() -> None:
    assert subject_names("tidb_my.db_t") == ("tidb_my_db_t-key", "tidb_my_db_t-value")
    assert subject_names("tidb_shop_orders") == ("tidb_shop_orders-key", "tidb_shop_orders-value")


def test_unknown_subjects_and_ids_are_none_or_empty() -> None:
    reg: Any = _Registry({"t-value": ["s1", "s2"]})
    assert latest_version(reg, "t-key") is None and all_versions(reg, "t-key") == []
    assert [(r.schema_id, r.schema.schema_str) for r in all_versions(reg, "t-value")] == [(101, "s1"), (102, "s2")]
    assert latest_version(reg, "t-value").version == 2
    assert (schema_text(reg, 101), schema_text(reg, 7)) == ("s1", None)


@pytest.mark.parametrize("failure", [ConnectionRefusedError("refused"), SchemaRegistryError(503, 50301, "busy"),
                                     SchemaRegistryError(401, 40101, "unauthorized")])
def test_any_other_failure_is_one_error_naming_the_registry_without_credentials(failure: Exception) -> None:
    reg: Any = _Registry({"t-value": ["s1"]}, down=failure)
    for call in (lambda: latest_version(reg, "t-value"), lambda: all_versions(reg, "t-value"),
                 lambda: schema_text(reg, 101)):
        with pytest.raises(SchemaRegistryUnavailable, match=r"schema registry https://registry\.test:8081 failed") as e:
            call()
        assert "secret" not in str(e.value) and "user" not in str(e.value)


def test_registry_url_of_a_real_client() -> None:
    client = SchemaRegistryClient({"url": "http://127.0.0.1:18081", "basic.auth.user.info": "k:s"})
    assert registry_url(client) == "http://127.0.0.1:18081"
