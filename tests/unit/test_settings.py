from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import (
    DEFAULT_PG_PORT,
    SettingsError,
    app_database_url,
    load_settings,
    postgres_url,
    project_root,
    redact,
    url_password,
    url_user,
    with_database,
)

ADMIN = "postgresql://postgres:s3cret@db.internal:5432/slotwise?sslmode=require"


def test_defaults_embed_everything_under_the_project_var_folder() -> None:
    settings = load_settings({})
    assert settings.data_dir == project_root() / "var"
    assert (settings.database_url, settings.app_database_url, settings.redis_url) == (None,) * 3
    assert settings.pg_port == DEFAULT_PG_PORT


def test_environment_overrides_and_empty_means_unset(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DATABASE_URL": ADMIN,
            "REDIS_URL": "",
            "SLOTWISE_DATA_DIR": str(tmp_path),
            "SLOTWISE_PG_PORT": "25000",
        }
    )
    assert settings.database_url == ADMIN
    assert settings.redis_url is None
    assert settings.data_dir == tmp_path
    assert settings.pg_port == 25000


def test_repr_hides_urls() -> None:
    assert "s3cret" not in repr(load_settings({"DATABASE_URL": ADMIN}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL must start with"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must start with"),
        ({"REDIS_URL": "redis://localhost:abc/0"}, "not a usable Valkey URL: Port"),
        ({"REDIS_URL": "redis://localhost:6379/zz"}, "database number must be a whole number"),
        ({"APP_DATABASE_URL": "postgresql://a@b/c"}, "DATABASE_URL is not"),
        ({"SLOTWISE_PG_PORT": "abc"}, "must be a port number"),
        ({"SLOTWISE_REDIS_PORT": "40000"}, "between 1024 and 32767"),
        ({"SLOTWISE_AUTH_CACHE_SECONDS": "soon"}, "must be a number of seconds, got 'soon'"),
        ({"SLOTWISE_AUTH_CACHE_SECONDS": "0"}, "over 0 and at most 3600, got '0'"),
        ({"SLOTWISE_AUTH_CACHE_SECONDS": "-1"}, "over 0 and at most 3600, got '-1'"),
        ({"SLOTWISE_AUTH_CACHE_SECONDS": "nan"}, "over 0 and at most 3600, got 'nan'"),
        ({"SLOTWISE_AUTH_CACHE_SECONDS": "3601"}, "over 0 and at most 3600, got '3601'"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_app_url_keeps_server_database_and_options_but_swaps_credentials() -> None:
    app = app_database_url(ADMIN, "p@ss/word")
    assert app.startswith("postgresql://slotwise_app:")
    assert app.endswith("@db.internal:5432/slotwise?sslmode=require")
    assert (url_user(app), url_password(app)) == ("slotwise_app", "p@ss/word")


def test_url_helpers() -> None:
    url = postgres_url("postgres", "a:b@c", "127.0.0.1", 25432, "slotwise")
    assert url_password(url) == "a:b@c"
    assert with_database(url, "other").endswith("@127.0.0.1:25432/other")
    assert redact(url) == "postgresql://postgres:***@127.0.0.1:25432/slotwise"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
