"""A quiet console (issue 13, part 6): Ray Data's progress output only on a TTY or with --verbose."""

from __future__ import annotations

import pytest

from pretextlab.cluster.console import VERBOSE_ENV, configure_ray_data_progress, ray_data_progress_bars


def test_policy_tty_or_verbose(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert ray_data_progress_bars(tty=True) and not ray_data_progress_bars(tty=False)
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert ray_data_progress_bars(tty=False)


def test_cli_verbose_flag_sets_the_environment(monkeypatch):
    from pretextlab.cli import build_parser

    assert build_parser().parse_args(["--verbose", "catalog", "x"]).verbose
    assert not build_parser().parse_args(["catalog", "x"]).verbose


def _run_dataset() -> None:
    import ray.data

    ray.data.range(40, override_num_blocks=4).map_batches(lambda b: b).take_all()


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_data_progress_output_follows_the_policy(ray_session, capfd, monkeypatch, verbose):
    import ray.data

    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "0")  # restored after the test
    if verbose:
        monkeypatch.setenv(VERBOSE_ENV, "1")
    else:
        monkeypatch.delenv(VERBOSE_ENV, raising=False)
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars
    try:
        assert configure_ray_data_progress(tty=False) is verbose
        assert ctx.enable_progress_bars is verbose
        capfd.readouterr()
        _run_dataset()
        out = capfd.readouterr()
        text = out.out + out.err
        if not verbose:  # no TTY, not verbose: not one progress line (with bars on, Ray Data prints them; how
            # many depends on its refresh timer and on CI detection, so only the flag is checked then)
            assert "Total Progress" not in text and "Running Dataset" not in text, text[-2000:]
    finally:
        ctx.enable_progress_bars = before
