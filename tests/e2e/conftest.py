"""The e2e tier runs against the same throwaway servers and live API as the integration tier."""

from tests.integration.conftest import api, infra, scratch_db  # noqa: F401
