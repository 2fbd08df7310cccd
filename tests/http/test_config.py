"""ServerConfig: defaults, VDB_* environment, flags, validation, masked description."""

from __future__ import annotations

import argparse

import pytest

from vdb.config import ServerConfig, add_arguments
from vdb.errors import InvalidInput


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_env_and_flags_in_order_of_precedence():
    cfg = ServerConfig.from_sources(parse(), env={})
    assert cfg.port == 6333 and cfg.bind_host == "127.0.0.1" and cfg.warm is True
    env = {
        "VDB_PORT": "7001",
        "VDB_MAX_BODY_BYTES": "1000",
        "VDB_WARM": "false",
        "VDB_HOST": "0.0.0.0",
    }
    cfg = ServerConfig.from_sources(parse(), env=env)
    assert (cfg.port, cfg.max_body_bytes, cfg.warm, cfg.bind_host) == (7001, 1000, False, "0.0.0.0")
    cfg = ServerConfig.from_sources(parse("--port", "7002", "--warm"), env=env)
    assert (cfg.port, cfg.max_body_bytes, cfg.warm) == (7002, 1000, True)


def test_secrets_are_masked():
    cfg = ServerConfig.from_sources(
        parse("--api-key", "s3cret", "--read-only-api-key", "r0"), env={}
    )
    text = repr(cfg.describe())
    assert "s3cret" not in text and "r0'" not in text
    assert cfg.describe()["api_key"] == "***"


@pytest.mark.parametrize(
    "argv, env",
    [
        ((), {"VDB_PORT": "http"}),
        (("--port", "70000"), {}),
        (("--ssl-certfile", "c.pem"), {}),
        (("--read-only-api-key", "r"), {}),
        (("--api-key", "same", "--read-only-api-key", "same"), {}),
        (("--max-body-bytes", "0"), {}),
        ((), {"VDB_WARM": "maybe"}),
        (("--fresh-limit", "0"), {}),
        ((), {"VDB_GRAPH_SEAL_SIZE": "-5"}),
    ],
)
def test_bad_settings_are_refused(argv, env):
    with pytest.raises(InvalidInput):
        ServerConfig.from_sources(parse(*argv), env=env)


def test_database_settings_reach_vdb_open_only_when_given():
    assert ServerConfig.from_sources(parse(), env={}).open_options() == {"warm": True}
    cfg = ServerConfig.from_sources(
        parse("--fresh-limit", "1000"), env={"VDB_GRAPH_SEAL_SIZE": "20000", "VDB_WARM": "0"}
    )
    assert cfg.open_options() == {"warm": False, "fresh_limit": 1000, "graph_seal_size": 20000}
