"""Typed configuration: YAML + key=value overrides; every error names the file and the field."""

from __future__ import annotations

import pytest

from pretextlab.core.config import ConfigError, load_config, parse_overrides
from pretextlab.jobs.ingest import IngestConfig


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=[x, y]", "d=true", "e=", "f=0.5"]) == {
        "a": {"b": 1, "c": ["x", "y"]},
        "d": True,
        "e": "",
        "f": 0.5,
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_override_is_named(bad):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([bad])


def test_precedence_file_then_flags_then_overrides(tmp_path):
    cfg_file = tmp_path / "ingest.yaml"
    cfg_file.write_text("sources: [a.tif]\ndest: /from/file\nzarr:\n  chunk: 256\n  threads: 4\n")
    cfg = load_config(IngestConfig, cfg_file, ["zarr.threads=1"], flags={"dest": "/from/flag"})
    assert cfg.dest == "/from/flag" and cfg.zarr.chunk == 256 and cfg.zarr.threads == 1


@pytest.mark.parametrize(
    "text,overrides,message",
    [
        ("sources: [a]\ndest: d\nzarr: {chunk: big}\n", [], "ingest.yaml: zarr.chunk: Input should be a valid integer"),
        ("sources: [a]\ndest: d\nzarr: {chunk: 32}\n", [], "zarr.chunk: Input should be greater than or equal to 64"),
        (
            "sources: [a]\ndest: d\nmodality: mri\n",
            [],
            "modality: unknown modality 'mri'; known: histopathology, radiograph, ultrasound",
        ),
        ("sources: [a]\ndest: d\nbogus: 1\n", [], "bogus: unknown field"),
        ("sources: [a]\n", [], "dest: Field required"),
        ("sources: [a]\ndest: d\n", ["zarr.compressor=gzip"], "ingest.yaml + overrides: zarr.compressor"),
        ("- just\n- a list\n", [], "top level must be a mapping"),
        ("sources: [a\n", [], "not valid YAML (line"),
    ],
)
def test_errors_name_file_and_field(tmp_path, text, overrides, message):
    cfg_file = tmp_path / "ingest.yaml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(IngestConfig, cfg_file, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
