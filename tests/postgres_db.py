"""A scratch PostgreSQL database per test, on the server FEDLM_TEST_POSTGRES_URL names (default: the local one).

The test is skipped, saying why, where no server answers or it refuses CREATE DATABASE.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

URL = os.environ.get("FEDLM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped (its sessions ended) afterwards."""
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = f"fedlm_test_{uuid.uuid4().hex[:12]}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:  # no server, no role, no permission: all mean "cannot test here"
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {make_url(URL).render_as_string(hide_password=True)} ({type(err).__name__}); "
                    "set FEDLM_TEST_POSTGRES_URL to one that allows CREATE DATABASE")
    try:
        yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
