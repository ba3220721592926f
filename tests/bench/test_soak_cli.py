"""bench.soak_cli: the shared soak command line (no soak is run)."""

from __future__ import annotations

import pytest

from bench.common import RESULTS
from bench.soak_cli import QUICK, parse, soak_config, soak_parser


def test_settings_for_the_stack_are_passed_and_merged() -> None:
    p = soak_parser("prog", "d", "out", click_rate=1234.0)
    args = parse(p, ["--env", "MINDSTREAM_REFRESH__FAST_PATH_INTERVAL_S=5", "--env", 'MINDSTREAM_X__Y={"a.b": 1}'])
    cfg = soak_config(args, env={"MINDSTREAM_REFRESH__HEAP_PROFILE": "true"}, busy_activities=("round",))
    assert cfg.click_rate == 1234.0 and cfg.busy_activities == ("round",)
    assert cfg.env == {
        "MINDSTREAM_REFRESH__FAST_PATH_INTERVAL_S": "5",
        "MINDSTREAM_X__Y": '{"a.b": 1}',
        "MINDSTREAM_REFRESH__HEAP_PROFILE": "true",
    }
    assert args.results == RESULTS and args.out == "out"


@pytest.mark.parametrize("bad", ["FOO=1", "MINDSTREAM_X", "=1"])
def test_a_setting_not_of_the_form_name_equals_value_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(soak_parser("prog", "d", "out"), ["--env", bad])
    assert "expected MINDSTREAM_<SECTION>__<NAME>=VALUE" in capsys.readouterr().err


def test_quick_changes_the_defaults_but_not_what_is_given() -> None:
    args = parse(soak_parser("prog", "d", "out"), ["--quick", "--items", "500"])
    assert args.items == 500 and args.duration == QUICK["duration"] and args.results == RESULTS / "quick"


def test_an_unknown_default_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no such soak argument"):
        soak_parser("prog", "d", "out", click_rat=1.0)
